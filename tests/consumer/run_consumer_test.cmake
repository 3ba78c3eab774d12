# Installs this build of distillrec into a temporary prefix, then configures, builds and runs the
# consumer project against it with find_package(distillrec), including the usage snippet taken
# from README.md (between <!-- snippet:begin --> and <!-- snippet:end -->).
foreach(var SOURCE_DIR BINARY_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} not set")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BINARY_DIR}" --prefix "${WORK_DIR}/prefix"
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install failed: ${rc}")
endif()

file(READ "${SOURCE_DIR}/README.md" readme)
string(REGEX MATCH "<!-- snippet:begin -->[^`]*```cpp\n(.*)\n```[^<]*<!-- snippet:end -->" match "${readme}")
if(NOT CMAKE_MATCH_1)
  message(FATAL_ERROR "README.md has no C++ snippet between <!-- snippet:begin --> and <!-- snippet:end -->")
endif()
file(WRITE "${WORK_DIR}/readme_snippet.cpp" "${CMAKE_MATCH_1}\n")

execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build"
                        -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix"
                        "-DREADME_SNIPPET=${WORK_DIR}/readme_snippet.cpp"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer project failed: ${rc}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${WORK_DIR}/build" -j2 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer project failed: ${rc}")
endif()
foreach(program consumer readme_snippet)
  execute_process(COMMAND "${WORK_DIR}/build/${program}" WORKING_DIRECTORY "${WORK_DIR}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${program} failed: ${rc}")
  endif()
endforeach()
message(STATUS "consumer project built and ran against the installed package")
