# Looks for oneDNN (>= 2.6) without letting its CMake package stop the configuration.
#
# Distribution builds of oneDNN with an OpenCL GPU runtime (Debian's among them) declare
# find_package(OpenCL REQUIRED) inside dnnl-config.cmake, so a machine that has oneDNN but not
# the OpenCL development files (Debian: ocl-icd-opencl-dev) would fail to configure at all. This
# module checks for that case first and then builds without oneDNN, saying why.
set(dnnl_FOUND FALSE)
find_file(DISTILLREC_DNNL_CONFIG dnnl-config.cmake
  HINTS ${dnnl_DIR}
  PATH_SUFFIXES lib/${CMAKE_LIBRARY_ARCHITECTURE}/cmake/dnnl lib/cmake/dnnl lib64/cmake/dnnl)
if(DISTILLREC_DNNL_CONFIG)
  file(STRINGS "${DISTILLREC_DNNL_CONFIG}" _distillrec_dnnl_ocl REGEX "DNNL_GPU_RUNTIME \"OCL\"")
  if(_distillrec_dnnl_ocl)
    find_package(OpenCL QUIET)
    if(NOT OpenCL_FOUND)
      message(WARNING "oneDNN (${DISTILLREC_DNNL_CONFIG}) needs the OpenCL development files, "
                      "which are missing (Debian: apt-get install ocl-icd-opencl-dev); "
                      "building without oneDNN")
      return()
    endif()
  endif()
endif()
find_package(dnnl 2.6 CONFIG)
