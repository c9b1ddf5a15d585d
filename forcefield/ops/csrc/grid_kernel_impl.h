/* The kernel for float32 and float64, for the instruction set named by ISA (base, avx2, avx512):
 * functions gaunt_grid_f32_<ISA> and gaunt_grid_f64_<ISA>.  Included by grid_kernel.c, with
 * VEC_F32 / VEC_F64 the vector types and VL_F32 / VL_F64 their lengths. */

#define GLUE(name, type, isa) name##_##type##_##isa
#define NAME(name, type, isa) GLUE(name, type, isa)

#define REAL float
#define VEC VEC_F32
#define VL VL_F32
#define FN(name) NAME(name, f32, ISA)
#include "grid_kernel_body.h"
#undef FN
#undef VL
#undef VEC
#undef REAL

#define REAL double
#define VEC VEC_F64
#define VL VL_F64
#define FN(name) NAME(name, f64, ISA)
#include "grid_kernel_body.h"
#undef FN
#undef VL
#undef VEC
#undef REAL

#undef NAME
#undef GLUE
