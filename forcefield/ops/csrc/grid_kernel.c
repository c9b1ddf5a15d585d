/* Fused CPU kernel for the grid Gaunt product (forcefield.so3, method "grid").
 *
 * The product out_lm = sum_j w_j sum_k (2 pi / n_alpha) f1 f2 Y_lm (beta_j, alpha_k) on the
 * Gauss-Legendre x uniform-azimuth grid is evaluated separably, ring by ring:
 *
 *   Y_lm(beta, alpha) = P_lm(beta) * (cos(m alpha) for m >= 0, sin(|m| alpha) for m < 0)
 *
 *   1. polar synthesis    A_m(beta_j) = sum_l P_lm(beta_j) x_lm          (per input)
 *   2. azimuth synthesis  C(alpha_k) = sum_{m>=0} cos(m alpha_k) A_m,
 *                         S(alpha_k) = sum_{m>0}  sin(m alpha_k) A_-m     (k <= n_alpha / 2)
 *      so that f(alpha_k) = C + S and f(-alpha_k) = C - S (only half the ring is evaluated);
 *   3. product, folded:   even = C1 C2 + S1 S2, odd = C1 S2 + S1 C2
 *      (the halves of f1 f2 that are even and odd in alpha, per mirror pair);
 *   4. azimuth projection Sm_m = sum_k mu_k cos(m alpha_k) even_k  (m >= 0), sin for m < 0,
 *      with mu_k = 2 for a mirror pair, 1 for a self-mirrored azimuth, times 2 pi / n_alpha;
 *   5. polar projection   out_lm += w_j P_lm(beta_j) Sm_m.
 *
 * About 5x fewer multiply-adds than the three dense grid matrix products at L = 6, and every
 * intermediate stays in registers or L1: rows are processed 32 (float32) or 16 (float64) at
 * a time in four vectors, one SIMD lane per row, so each step is a broadcast table entry
 * times four vectors of rows.
 *
 * Table layouts (all built in float64 by forcefield/so3/tables.py and cast):
 *   leg1, leg2 [n_beta][2 L + 1][L + 1]    P_lm(beta_j) at [j][m + L][l] (0 for l < |m|)
 *   leg_out    [n_beta][2 Lo + 1][Lo + 1]  w_j P_lm(beta_j)
 *   az_cos, az_sin [n_half][az_stride]      cos / sin(m alpha_k), m <= max(L1, L2)
 *   out_cos, out_sin [n_half][Lo + 1]       mu_k (2 pi / n_alpha) cos / sin(m alpha_k)
 *   dims = {L1, L2, Lo, n_beta, n_half, az_stride}
 *   shape = {n_outer, n_inner}; strides in elements, {outer, inner}, for each input
 *   (0 broadcasts); out is contiguous [n_outer * n_inner][(Lo + 1)^2].
 *
 * The functions are plain C called by the operators in ops.cpp, whose threads
 * (at::parallel_for) run disjoint row ranges in parallel.  With GCC on x86 each is compiled
 * three times -- AVX-512 (64-byte vectors), AVX2+FMA (32-byte vectors) and the baseline
 * instruction set -- and picks the widest the CPU supports at run time, so one build runs
 * everywhere.  Every lane does the same operations in the same order whatever the vector
 * width, so the three give the same bits.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* 32-byte vectors: one AVX register (two SSE registers on the baseline build) */
typedef float vec_f32 __attribute__((vector_size(32)));
typedef double vec_f64 __attribute__((vector_size(32)));

#define VEC_F32 vec_f32
#define VEC_F64 vec_f64
#define VL_F32 8
#define VL_F64 4
#define ISA base
#include "grid_kernel_impl.h"
#undef ISA

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_BUILD 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#include "grid_kernel_impl.h"
#undef ISA
#pragma GCC pop_options

/* 64-byte vectors: one AVX-512 register */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec512_f32 __attribute__((vector_size(64)));
typedef double vec512_f64 __attribute__((vector_size(64)));
#undef VEC_F32
#undef VEC_F64
#undef VL_F32
#undef VL_F64
#define VEC_F32 vec512_f32
#define VEC_F64 vec512_f64
#define VL_F32 16
#define VL_F64 8
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define ISA avx512
#include "grid_kernel_impl.h"
#undef ISA
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

/* 2: AVX-512, 1: AVX2 + FMA, 0: baseline; FORCEFIELD_ISA=avx2|base caps it (benchmarks and
 * tests of the narrower builds on a wider CPU) */
static int vector_level(void)
{
#ifdef HAVE_AVX2_BUILD
    static int level = -1; /* atomic: threads may ask at the same time */
    int known = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (known < 0) {
        __builtin_cpu_init(); /* reads the CPU features once */
        int found = 0;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) found = 1;
        if (found && __builtin_cpu_supports("avx512f")) found = 2;
        const char *cap = getenv("FORCEFIELD_ISA");
        if (cap && strcmp(cap, "avx2") == 0 && found > 1) found = 1;
        if (cap && strcmp(cap, "base") == 0) found = 0;
        __atomic_store_n(&level, found, __ATOMIC_RELAXED);
        known = found;
    }
    return known;
#else
    return 0;
#endif
}

/* the instruction set the grid kernel runs with: "avx512", "avx2" or "base" */
const char *gaunt_grid_isa(void)
{
    static const char *names[] = {"base", "avx2", "avx512"};
    return names[vector_level()];
}

#ifdef HAVE_AVX2_BUILD
#define DISPATCH(T, ...)                                                                   \
    (vector_level() == 2   ? gaunt_grid_##T##_avx512(__VA_ARGS__)                           \
     : vector_level() == 1 ? gaunt_grid_##T##_avx2(__VA_ARGS__)                             \
                           : gaunt_grid_##T##_base(__VA_ARGS__))
#else
#define DISPATCH(T, ...) gaunt_grid_##T##_base(__VA_ARGS__)
#endif

#define EXPORT(T, REAL)                                                                    \
    int gaunt_grid_##T(const int64_t *shape, const REAL *x1, const int64_t *x1_strides,    \
                       const REAL *x2, const int64_t *x2_strides, REAL *out,               \
                       int64_t row_begin, int64_t row_end, const int32_t *dims,            \
                       const REAL *leg1, const REAL *leg2, const REAL *leg_out,            \
                       const REAL *az_cos, const REAL *az_sin, const REAL *out_cos,        \
                       const REAL *out_sin)                                                \
    {                                                                                      \
        return DISPATCH(T, shape, x1, x1_strides, x2, x2_strides, out, row_begin, row_end, \
                        dims, leg1, leg2, leg_out, az_cos, az_sin, out_cos, out_sin);      \
    }

EXPORT(f32, float)
EXPORT(f64, double)
