# Looks for SentencePiece (Debian: libsentencepiece-dev), the tokenizer library of
# include/distillrec/text/, and defines the imported target distillrec::sentencepiece (headers,
# the processor and the trainer). Used by this project's configuration and, installed beside
# distillrecConfig.cmake, by the package's: a host that links distillrec::text finds the library
# on its own machine. Sets DISTILLREC_SENTENCEPIECE_FOUND.
find_path(DISTILLREC_SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h)
find_library(DISTILLREC_SENTENCEPIECE_LIBRARY sentencepiece)
find_library(DISTILLREC_SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train)
if(DISTILLREC_SENTENCEPIECE_INCLUDE_DIR AND DISTILLREC_SENTENCEPIECE_LIBRARY AND DISTILLREC_SENTENCEPIECE_TRAIN_LIBRARY)
  set(DISTILLREC_SENTENCEPIECE_FOUND TRUE)
  if(NOT TARGET distillrec::sentencepiece)
    add_library(distillrec::sentencepiece INTERFACE IMPORTED)
    set_target_properties(distillrec::sentencepiece PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${DISTILLREC_SENTENCEPIECE_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${DISTILLREC_SENTENCEPIECE_TRAIN_LIBRARY};${DISTILLREC_SENTENCEPIECE_LIBRARY}")
  endif()
else()
  set(DISTILLREC_SENTENCEPIECE_FOUND FALSE)
endif()
