/* Body of the fused Gaunt convolution kernels for one floating-point type.
 *
 * Included by _conv_kernel.c once per (type, instruction set) with REAL and FN(name)
 * defined.  See _conv_kernel.c for the algorithm, the argument layouts and the scalar T
 * whose partial derivatives these functions compute.  Grid loops run in chunks of W
 * points, one 32-byte GCC vector VW (8 floats or 4 doubles: one AVX register) that stays in
 * registers; sums over points keep W partial sums added in a fixed order.
 */

#define W ((int)(sizeof(VW) / sizeof(REAL)))
#define LOAD(ptr) (*(const VW *)(ptr))
#define STORE(ptr) (*(VW *)(ptr))

/* Yg[l2][p] = sum over m of sh[l2 m] * ysh[l2 m][p]: the filter's per-degree grid values */
INLINE void FN(filter_grid)(const REAL *restrict sh, const REAL *restrict ysh, int n2, int pp,
                            REAL *restrict yg)
{
    for (int l = 0; l < n2; ++l) {
        for (int p = 0; p < pp; p += W) {
            VW acc = LOAD(ysh + (int64_t)(l * l) * pp + p) * sh[l * l];
            for (int k = l * l + 1; k < (l + 1) * (l + 1); ++k)
                acc += sh[k] * LOAD(ysh + (int64_t)k * pp + p);
            STORE(yg + l * pp + p) = acc;
        }
    }
}

/* sum_p a[p] b[p] with W partial sums added in a fixed order */
INLINE REAL FN(dot)(const REAL *restrict a, const REAL *restrict b, int pp)
{
    VW acc = LOAD(a) * LOAD(b);
    for (int p = W; p < pp; p += W) acc += LOAD(a + p) * LOAD(b + p);
    REAL t[8];
    memcpy(t, &acc, sizeof(acc));
    if (W == 8) return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* X on one chunk: sum_l1 wn[l1] hg[l1][p] (hg[0][p] without node weights) */
INLINE VW FN(chunk_x)(const REAL *restrict hg, const REAL *restrict wn, int n1, int pp)
{
    if (wn == NULL) return LOAD(hg);
    VW x = wn[0] * LOAD(hg);
    for (int l = 1; l < n1; ++l) x += wn[l] * LOAD(hg + l * pp);
    return x;
}

/* Yv on one chunk: sum_l2 r[l2] yg[l2][p] */
INLINE VW FN(chunk_y)(const REAL *restrict yg, const REAL *restrict r, int n2, int pp)
{
    VW y = r[0] * LOAD(yg);
    for (int l = 1; l < n2; ++l) y += r[l] * LOAD(yg + l * pp);
    return y;
}

/* Partial of T with respect to G: for each receiving node in [begin, end), the sum over its
 * incoming edges (CSR: ptr, perm) of X * Yv on the grid, written to z [N][C][pp]. */
static int FN(conv_receivers)(const int64_t *dims, const REAL *hg, const REAL *wn,
                              const int64_t *wn_strides, const REAL *r,
                              const int64_t *r_strides, const REAL *sh, int64_t sh_stride,
                              const REAL *ysh, const int64_t *sender, const int64_t *ptr,
                              const int64_t *perm, REAL *z, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], n1 = (int)dims[2], n2 = (int)dims[3], pp = (int)dims[5];
    REAL *yg = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * n2 + 64);
    if (yg == NULL) return 1;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t i = begin; i < end; ++i) {
        REAL *restrict zi = z + i * channels * pp;
        for (int64_t d = 0; d < (int64_t)channels * pp; ++d) zi[d] = 0;
        for (int64_t q = ptr[i]; q < ptr[i + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *hs = hg + sender[e] * node_stride;
            FN(filter_grid)(sh + e * sh_stride, ysh, n2, pp, yg);
            for (int c = 0; c < channels; ++c) {
                const REAL *hc = hs + (int64_t)c * n1 * pp;
                const REAL *wc = wn ? wn + e * wn_strides[0] + c * wn_strides[1] : NULL;
                const REAL *rc = r + e * r_strides[0] + c * r_strides[1];
                REAL *restrict zc = zi + (int64_t)c * pp;
                for (int p = 0; p < pp; p += W)
                    STORE(zc + p) += FN(chunk_x)(hc + p, wc, n1, pp) * FN(chunk_y)(yg + p, rc, n2, pp);
            }
        }
    }
    free(yg);
    return 0;
}

/* Partials of T with respect to hg, wn, r and sh (each written where its pointer is not
 * NULL), for the sending nodes in [begin, end) and their outgoing edges (CSR: ptr, perm).
 * Every output entry belongs to exactly one sending node, so ranges never share one. */
static int FN(conv_senders)(const int64_t *dims, const REAL *hg, const REAL *wn,
                            const int64_t *wn_strides, const REAL *r, const int64_t *r_strides,
                            const REAL *sh, int64_t sh_stride, const REAL *ysh, const REAL *g,
                            const int64_t *receiver, const int64_t *ptr, const int64_t *perm,
                            REAL *d_hg, REAL *d_wn, REAL *d_r, REAL *d_sh, int64_t begin,
                            int64_t end)
{
    const int channels = (int)dims[1], n1 = (int)dims[2], n2 = (int)dims[3];
    const int k2 = (int)dims[4], pp = (int)dims[5];
    const int need_x = d_r != NULL || d_sh != NULL, need_y = d_hg != NULL || d_wn != NULL;
    REAL *scratch = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * (2 * n2 + 2) + 64);
    if (scratch == NULL) return 1;
    REAL *yg = scratch, *d_yg = yg + n2 * pp, *tx = d_yg + n2 * pp, *ty = tx + pp;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t n = begin; n < end; ++n) {
        const REAL *hn = hg + n * node_stride;
        REAL *dh = d_hg ? d_hg + n * node_stride : NULL;
        if (dh) for (int64_t d = 0; d < node_stride; ++d) dh[d] = 0;
        for (int64_t q = ptr[n]; q < ptr[n + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *ge = g + receiver[e] * channels * pp;
            FN(filter_grid)(sh + e * sh_stride, ysh, n2, pp, yg);
            if (d_sh) for (int d = 0; d < n2 * pp; ++d) d_yg[d] = 0;
            for (int c = 0; c < channels; ++c) {
                const REAL *hc = hn + (int64_t)c * n1 * pp, *gc = ge + (int64_t)c * pp;
                const REAL *wc = wn ? wn + e * wn_strides[0] + c * wn_strides[1] : NULL;
                const REAL *rc = r + e * r_strides[0] + c * r_strides[1];
                /* ty = G * Yv (the gradient of X), tx = G * X (the gradient of Yv) */
                for (int p = 0; p < pp; p += W) {
                    if (need_y) STORE(ty + p) = LOAD(gc + p) * FN(chunk_y)(yg + p, rc, n2, pp);
                    if (need_x) STORE(tx + p) = LOAD(gc + p) * FN(chunk_x)(hc + p, wc, n1, pp);
                }
                if (dh) {
                    REAL *dc = dh + (int64_t)c * n1 * pp;
                    for (int l = 0; l < n1; ++l) {
                        const REAL w = wc ? wc[l] : (REAL)1;
                        for (int p = 0; p < pp; p += W) STORE(dc + l * pp + p) += w * LOAD(ty + p);
                    }
                }
                if (d_wn) {
                    REAL *dw = d_wn + (e * channels + c) * n1;
                    for (int l = 0; l < n1; ++l) dw[l] = FN(dot)(hc + l * pp, ty, pp);
                }
                if (d_r) {
                    REAL *dr = d_r + (e * channels + c) * n2;
                    for (int l = 0; l < n2; ++l) dr[l] = FN(dot)(yg + l * pp, tx, pp);
                }
                if (d_sh) {
                    for (int l = 0; l < n2; ++l) {
                        const REAL w = rc[l];
                        for (int p = 0; p < pp; p += W) STORE(d_yg + l * pp + p) += w * LOAD(tx + p);
                    }
                }
            }
            if (d_sh) {
                REAL *ds = d_sh + e * k2;
                for (int l = 0; l < n2; ++l) {
                    for (int k = l * l; k < (l + 1) * (l + 1); ++k) {
                        ds[k] = FN(dot)(ysh + (int64_t)k * pp, d_yg + l * pp, pp);
                    }
                }
            }
        }
    }
    free(scratch);
    return 0;
}

#undef STORE
#undef LOAD
#undef W
