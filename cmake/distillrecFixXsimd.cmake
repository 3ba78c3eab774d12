# Debian's xsimd 8 package config lists "xtl" in the xsimd target's link interface without
# finding it (xtl is only needed for xtl::xcomplex support, which distillrec does not use).
# Provide an empty stand-in so linking xsimd does not turn into a bare "-lxtl".
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_distillrec_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_distillrec_xsimd_libs AND "xtl" IN_LIST _distillrec_xsimd_libs)
    add_library(xtl INTERFACE IMPORTED)
  endif()
  unset(_distillrec_xsimd_libs)
endif()
