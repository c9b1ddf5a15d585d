/* Fused CPU kernels of the Gaunt convolution (the forcefield:: torch operators,
 * registered in ops.cpp).
 *
 * The convolution of a GauntMACE layer, on the exact quadrature grid of its Gaunt product
 * (P points, padded to pp), is
 *
 *   Z[i, c, p] = sum over edges e = (s -> i) of X[e, c, p] * Yv[e, c, p]
 *   X[e, c, p]  = sum_l1 wn[e, c, l1] * hg[s, c, l1, p]       (node side; hg per node)
 *   Yv[e, c, p] = sum_l2 r[e, c, l2] * Yg[e, l2, p]            (filter side)
 *   Yg[e, l2, p] = sum_m sh[e, l2 m] * ysh[l2 m, p]            (edge harmonics on the grid)
 *
 * and the caller projects Z once per node.  Z is linear in each of hg, wn, r and sh, so with
 * a fifth argument g [N, C, pp] the scalar T = sum g * Z is multilinear in (hg, wn, r, sh,
 * g): Z is its partial with respect to g, and the backward (and every higher derivative)
 * is made of its partials with one argument replaced by an incoming gradient.  Two kernels
 * compute them without writing any per-edge grid tensor:
 *
 *   conv_receivers: dT/dg (= Z), looping over receiving nodes and their incoming edges;
 *   conv_senders:   dT/dhg, dT/dwn, dT/dr, dT/dsh, looping over sending nodes and their
 *                   outgoing edges (every output belongs to one sending node).
 *
 * The backward of conv_senders' four partials (training on forces) would need one pass per
 * substituted argument; conv_double_senders and conv_double_receivers compute the sum of
 * those partials in one pass each (see the body).
 *
 * Each works on a range of nodes, so threads (at::parallel_for in ops.cpp) can run disjoint ranges; the order of
 * every sum is fixed by the CSR order, so results are bit-identical for any thread count.
 *
 * Layouts: hg [N][C][n1][pp] and g, z [N][C][pp] contiguous; wn[e * ws0 + c * ws1 + l1]
 * (NULL: no node weights, n1 = 1, X = hg); r[e * rs0 + c * rs1 + l2]; sh[e * sh_stride + k],
 * k < n2^2; ysh [n2^2][pp] (zero on padded points); dims = {N, C, n1, n2, n2^2, pp}.
 * Outputs d_hg like hg, d_wn [E][C][n1], d_r [E][C][n2], d_sh [E][n2^2], all contiguous.
 *
 * The same file holds the kernels of the Gaunt powers of the many-body product
 * (powers_forward / powers_backward / powers_double in the body): per node and channel, grid values of the
 * feature, weighted per degree, raised to each order and projected, all in registers.
 *
 * With GCC on x86 each function is compiled for AVX2+FMA and for the baseline instruction
 * set and picks at run time, as _grid_kernel.c does.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* Scratch of at least `bytes`, 64-byte aligned: aligned_alloc wants a size that is a multiple
 * of the alignment (C11), so the size is rounded up.  NULL when out of memory. */
static void *scratch_alloc(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

/* the baseline build returns 32-byte vectors from inlined helpers only: no ABI concern */
#pragma GCC diagnostic ignored "-Wpsabi"

/* 32-byte vectors of grid points; element alignment only (rows of the tables and tensors
 * are not assumed to be aligned to the vector size) */
typedef float vw_f32 __attribute__((vector_size(32), aligned(4)));
typedef double vw_f64 __attribute__((vector_size(32), aligned(8)));

#define GLUE(name, type, isa) name##_##type##_##isa
#define NAME(name, type, isa) GLUE(name, type, isa)

#define ISA base
#define REAL float
#define VW vw_f32
#define FN(name) NAME(name, f32, ISA)
#include "conv_kernel_body.h"
#undef FN
#undef VW
#undef REAL
#define REAL double
#define VW vw_f64
#define FN(name) NAME(name, f64, ISA)
#include "conv_kernel_body.h"
#undef FN
#undef VW
#undef REAL
#undef ISA

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_BUILD 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#define REAL float
#define VW vw_f32
#define FN(name) NAME(name, f32, ISA)
#include "conv_kernel_body.h"
#undef FN
#undef VW
#undef REAL
#define REAL double
#define VW vw_f64
#define FN(name) NAME(name, f64, ISA)
#include "conv_kernel_body.h"
#undef FN
#undef VW
#undef REAL
#undef ISA
#pragma GCC pop_options
#endif

static int use_avx2(void)
{
#ifdef HAVE_AVX2_BUILD
    __builtin_cpu_init();
    const char *cap = getenv("FORCEFIELD_ISA"); /* base: the baseline build (tests, benchmarks) */
    if (cap && strcmp(cap, "base") == 0) return 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#ifdef HAVE_AVX2_BUILD
#define DISPATCH(name, T, ...) \
    (use_avx2() ? name##_##T##_avx2(__VA_ARGS__) : name##_##T##_base(__VA_ARGS__))
#else
#define DISPATCH(name, T, ...) name##_##T##_base(__VA_ARGS__)
#endif

#define EXPORT(T, REAL_T)                                                                    \
    int gaunt_conv_receivers_##T(const int64_t *dims, const REAL_T *hg, const REAL_T *wn,    \
                                 const int64_t *wn_strides, const REAL_T *r,                 \
                                 const int64_t *r_strides, const REAL_T *sh,                 \
                                 int64_t sh_stride, const REAL_T *ysh, const int64_t *sender, \
                                 const int64_t *ptr, const int64_t *perm, REAL_T *z,         \
                                 int64_t begin, int64_t end)                                 \
    {                                                                                        \
        return DISPATCH(conv_receivers, T, dims, hg, wn, wn_strides, r, r_strides, sh,       \
                        sh_stride, ysh, sender, ptr, perm, z, begin, end);                   \
    }                                                                                        \
    int gaunt_conv_senders_##T(const int64_t *dims, const REAL_T *hg, const REAL_T *wn,      \
                               const int64_t *wn_strides, const REAL_T *r,                   \
                               const int64_t *r_strides, const REAL_T *sh, int64_t sh_stride, \
                               const REAL_T *ysh, const REAL_T *g, const int64_t *receiver,  \
                               const int64_t *ptr, const int64_t *perm, REAL_T *d_hg,        \
                               REAL_T *d_wn, REAL_T *d_r, REAL_T *d_sh, int64_t begin,       \
                               int64_t end)                                                  \
    {                                                                                        \
        return DISPATCH(conv_senders, T, dims, hg, wn, wn_strides, r, r_strides, sh,         \
                        sh_stride, ysh, g, receiver, ptr, perm, d_hg, d_wn, d_r, d_sh,       \
                        begin, end);                                                         \
    }

EXPORT(f32, float)
EXPORT(f64, double)

#define EXPORT_DOUBLE(T, REAL_T)                                                             \
    int gaunt_conv_double_senders_##T(const int64_t *dims, const int64_t *strides,           \
                                      const REAL_T *hg, const REAL_T *wn, const REAL_T *r,   \
                                      const REAL_T *sh, const REAL_T *ysh, const REAL_T *g,  \
                                      const REAL_T *u0, const REAL_T *u1, const REAL_T *u2,  \
                                      const REAL_T *u3, const int64_t *receiver,             \
                                      const int64_t *ptr, const int64_t *perm, REAL_T *d_hg, \
                                      REAL_T *d_wn, REAL_T *d_r, REAL_T *d_sh,               \
                                      int64_t begin, int64_t end)                            \
    {                                                                                        \
        return DISPATCH(conv_double_senders, T, dims, strides, hg, wn, r, sh, ysh, g, u0,   \
                        u1, u2, u3, receiver, ptr, perm, d_hg, d_wn, d_r, d_sh, begin, end); \
    }                                                                                        \
    int gaunt_conv_double_receivers_##T(const int64_t *dims, const int64_t *strides,         \
                                        const REAL_T *hg, const REAL_T *wn, const REAL_T *r, \
                                        const REAL_T *sh, const REAL_T *ysh,                 \
                                        const REAL_T *u0, const REAL_T *u1,                  \
                                        const REAL_T *u2, const REAL_T *u3,                  \
                                        const int64_t *sender, const int64_t *ptr,           \
                                        const int64_t *perm, REAL_T *z, int64_t begin,       \
                                        int64_t end)                                         \
    {                                                                                        \
        return DISPATCH(conv_double_receivers, T, dims, strides, hg, wn, r, sh, ysh, u0, u1, \
                        u2, u3, sender, ptr, perm, z, begin, end);                           \
    }

EXPORT_DOUBLE(f32, float)
EXPORT_DOUBLE(f64, double)

#define EXPORT_POWERS(T, REAL_T)                                                             \
    int gaunt_powers_forward_##T(const int64_t *dims, const REAL_T *a, const REAL_T *w,      \
                                 const REAL_T *y, const REAL_T *proj, REAL_T *q,             \
                                 int64_t begin, int64_t end)                                 \
    {                                                                                        \
        return DISPATCH(powers_forward, T, dims, a, w, y, proj, q, begin, end);              \
    }                                                                                        \
    int gaunt_powers_backward_##T(const int64_t *dims, const REAL_T *a, const REAL_T *w,     \
                                  const REAL_T *y, const REAL_T *proj, const REAL_T *g,      \
                                  REAL_T *da, REAL_T *dw, int64_t begin, int64_t end)        \
    {                                                                                        \
        return DISPATCH(powers_backward, T, dims, a, w, y, proj, g, da, dw, begin, end);     \
    }                                                                                        \
    int gaunt_powers_double_##T(const int64_t *dims, const REAL_T *a, const REAL_T *w,       \
                                const REAL_T *y, const REAL_T *proj, const REAL_T *g,        \
                                const REAL_T *u, const REAL_T *vw, REAL_T *ga, REAL_T *gw,   \
                                REAL_T *gg, int64_t begin, int64_t end)                      \
    {                                                                                        \
        return DISPATCH(powers_double, T, dims, a, w, y, proj, g, u, vw, ga, gw, gg, begin,  \
                        end);                                                                \
    }

EXPORT_POWERS(f32, float)
EXPORT_POWERS(f64, double)
