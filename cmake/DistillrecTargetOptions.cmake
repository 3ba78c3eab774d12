# Compile options for this project's own tests, examples and benchmarks (never for consumers).
function(distillrec_target_options target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(DISTILLREC_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(DISTILLREC_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 12.3)
      # GCC < 12.3 flags its own _mm512_undefined_ps() (PR 105593) when Eigen's AVX-512 GEMM
      # is inlined; the warning is in the compiler's intrinsics header, not in this library.
      target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
    endif()
  endif()
  if(DISTILLREC_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
  if(DISTILLREC_SANITIZE_THREAD)
    target_compile_options(${target} PRIVATE -fsanitize=thread -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=thread)
  endif()
endfunction()

# The library target this project's own programs use: oneDNN when available.
if(DISTILLREC_HAS_ONEDNN)
  set(DISTILLREC_LIB distillrec::onednn)
else()
  set(DISTILLREC_LIB distillrec::distillrec)
endif()

# This project's programs that can run under mpirun (the training and distillation examples,
# the MPI tests) link this in addition: the library's MPI target where MPI was found.
if(DISTILLREC_HAS_MPI)
  set(DISTILLREC_MPI_LIB distillrec::mpi)
else()
  set(DISTILLREC_MPI_LIB "")
endif()
