// include/addcow.h compiled as C++ (extern "C" linkage, C++-clean declarations): the C check,
// compiled by the C++ compiler.
#include "header_check.c"
