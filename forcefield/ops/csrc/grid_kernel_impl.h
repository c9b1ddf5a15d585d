/* The kernel for float32 and float64, for the instruction set named by ISA (base, avx2):
 * functions gaunt_grid_f32_<ISA> and gaunt_grid_f64_<ISA>.  Included by _grid_kernel.c. */

#define GLUE(name, type, isa) name##_##type##_##isa
#define NAME(name, type, isa) GLUE(name, type, isa)

#define REAL float
#define VEC vec_f32
#define VL 8
#define FN(name) NAME(name, f32, ISA)
#include "grid_kernel_body.h"
#undef FN
#undef VL
#undef VEC
#undef REAL

#define REAL double
#define VEC vec_f64
#define VL 4
#define FN(name) NAME(name, f64, ISA)
#include "grid_kernel_body.h"
#undef FN
#undef VL
#undef VEC
#undef REAL

#undef NAME
#undef GLUE
