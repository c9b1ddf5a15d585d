/* Body of the fused Gaunt convolution kernels for one floating-point type.
 *
 * Included by _conv_kernel.c once per (type, instruction set) with REAL and FN(name)
 * defined.  See _conv_kernel.c for the algorithm, the argument layouts and the scalar T
 * whose partial derivatives these functions compute.
 */

/* Yg[l2][p] = sum over m of sh[l2 m] * ysh[l2 m][p]: the filter's per-degree grid values */
INLINE void FN(filter_grid)(const REAL *restrict sh, const REAL *restrict ysh, int n2, int pp,
                            REAL *restrict yg)
{
    for (int l = 0; l < n2; ++l) {
        REAL *restrict row = yg + l * pp;
        for (int p = 0; p < pp; ++p) row[p] = 0;
        for (int k = l * l; k < (l + 1) * (l + 1); ++k) {
            const REAL s = sh[k];
            const REAL *restrict y = ysh + (int64_t)k * pp;
            for (int p = 0; p < pp; ++p) row[p] += s * y[p];
        }
    }
}

/* X[p] = sum_l1 wn[l1] hg[l1][p] (hg[0][p] when there are no node weights) */
INLINE void FN(node_values)(const REAL *restrict hg, const REAL *restrict wn, int n1, int pp,
                            REAL *restrict x)
{
    if (wn == NULL) {
        for (int p = 0; p < pp; ++p) x[p] = hg[p];
        return;
    }
    const REAL w0 = wn[0];
    for (int p = 0; p < pp; ++p) x[p] = w0 * hg[p];
    for (int l = 1; l < n1; ++l) {
        const REAL w = wn[l];
        const REAL *restrict h = hg + l * pp;
        for (int p = 0; p < pp; ++p) x[p] += w * h[p];
    }
}

/* Yv[p] = sum_l2 r[l2] yg[l2][p] */
INLINE void FN(filter_values)(const REAL *restrict yg, const REAL *restrict r, int n2, int pp,
                              REAL *restrict y)
{
    const REAL r0 = r[0];
    for (int p = 0; p < pp; ++p) y[p] = r0 * yg[p];
    for (int l = 1; l < n2; ++l) {
        const REAL w = r[l];
        const REAL *restrict g = yg + l * pp;
        for (int p = 0; p < pp; ++p) y[p] += w * g[p];
    }
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
    REAL *scratch = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * (n2 + 2) + 64);
    if (scratch == NULL) return 1;
    REAL *yg = scratch, *x = yg + n2 * pp, *y = x + pp;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t i = begin; i < end; ++i) {
        REAL *restrict zi = z + i * channels * pp;
        for (int64_t d = 0; d < (int64_t)channels * pp; ++d) zi[d] = 0;
        for (int64_t q = ptr[i]; q < ptr[i + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *hs = hg + sender[e] * node_stride;
            FN(filter_grid)(sh + e * sh_stride, ysh, n2, pp, yg);
            for (int c = 0; c < channels; ++c) {
                FN(node_values)(hs + (int64_t)c * n1 * pp,
                                wn ? wn + e * wn_strides[0] + c * wn_strides[1] : NULL, n1, pp,
                                x);
                FN(filter_values)(yg, r + e * r_strides[0] + c * r_strides[1], n2, pp, y);
                REAL *restrict zc = zi + (int64_t)c * pp;
                for (int p = 0; p < pp; ++p) zc[p] += x[p] * y[p];
            }
        }
    }
    free(scratch);
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
    REAL *scratch = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * (2 * n2 + 3) + 64);
    if (scratch == NULL) return 1;
    REAL *yg = scratch, *d_yg = yg + n2 * pp, *x = d_yg + n2 * pp, *y = x + pp, *t = y + pp;
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
                if (need_y) {
                    /* t = G * Yv: the gradient of X */
                    FN(filter_values)(yg, rc, n2, pp, y);
                    for (int p = 0; p < pp; ++p) t[p] = gc[p] * y[p];
                    if (dh) {
                        REAL *dc = dh + (int64_t)c * n1 * pp;
                        for (int l = 0; l < n1; ++l) {
                            const REAL w = wc ? wc[l] : (REAL)1;
                            for (int p = 0; p < pp; ++p) dc[l * pp + p] += w * t[p];
                        }
                    }
                    if (d_wn) {
                        REAL *dw = d_wn + (e * channels + c) * n1;
                        for (int l = 0; l < n1; ++l) {
                            REAL acc = 0;
                            for (int p = 0; p < pp; ++p) acc += hc[l * pp + p] * t[p];
                            dw[l] = acc;
                        }
                    }
                }
                if (need_x) {
                    /* t = G * X: the gradient of Yv */
                    FN(node_values)(hc, wc, n1, pp, x);
                    for (int p = 0; p < pp; ++p) t[p] = gc[p] * x[p];
                    if (d_r) {
                        REAL *dr = d_r + (e * channels + c) * n2;
                        for (int l = 0; l < n2; ++l) {
                            REAL acc = 0;
                            for (int p = 0; p < pp; ++p) acc += yg[l * pp + p] * t[p];
                            dr[l] = acc;
                        }
                    }
                    if (d_sh) {
                        for (int l = 0; l < n2; ++l) {
                            const REAL w = rc[l];
                            for (int p = 0; p < pp; ++p) d_yg[l * pp + p] += w * t[p];
                        }
                    }
                }
            }
            if (d_sh) {
                REAL *ds = d_sh + e * k2;
                for (int l = 0; l < n2; ++l) {
                    for (int k = l * l; k < (l + 1) * (l + 1); ++k) {
                        const REAL *ys = ysh + (int64_t)k * pp;
                        REAL acc = 0;
                        for (int p = 0; p < pp; ++p) acc += ys[p] * d_yg[l * pp + p];
                        ds[k] = acc;
                    }
                }
            }
        }
    }
    free(scratch);
    return 0;
}
