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

/* Gaunt powers of the many-body product, for nodes [begin, end): per node and channel,
 * A[l][p] = sum_m a[l m] y[l m][p] (grid values per degree), then for each order
 * nu = nu0 .. nu0 + n_nu - 1: X = sum_l w[nu][l] A[l], q[nu][k] = sum_p proj[k][p] X^nu.
 * dims = {N, C, K1 = n1^2, n1, n_nu, nu0, pp, K_out}; a [N][C][K1], w [N][n_nu][C][n1],
 * y [K1][pp], proj [K_out][pp] (quadrature weights included), q [N][n_nu][C][K_out]. */
INLINE void FN(node_grid)(const REAL *restrict a, const REAL *restrict y, int n1, int pp,
                          REAL *restrict ag)
{
    FN(filter_grid)(a, y, n1, pp, ag);
}

INLINE VW FN(power)(VW x, int nu)
{
    VW v = x;
    for (int k = 1; k < nu; ++k) v *= x;
    return v;
}

static int FN(powers_forward)(const int64_t *dims, const REAL *a, const REAL *w, const REAL *y,
                              const REAL *proj, REAL *q, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], k1 = (int)dims[2], n1 = (int)dims[3];
    const int n_nu = (int)dims[4], nu0 = (int)dims[5], pp = (int)dims[6], ko = (int)dims[7];
    REAL *ag = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * (n1 + 1) + 64);
    if (ag == NULL) return 1;
    REAL *v = ag + n1 * pp;
    for (int64_t n = begin; n < end; ++n) {
        for (int c = 0; c < channels; ++c) {
            FN(node_grid)(a + (n * channels + c) * k1, y, n1, pp, ag);
            for (int j = 0; j < n_nu; ++j) {
                const REAL *wc = w + ((n * n_nu + j) * channels + c) * n1;
                for (int p = 0; p < pp; p += W)
                    STORE(v + p) = FN(power)(FN(chunk_x)(ag + p, wc, n1, pp), nu0 + j);
                REAL *qc = q + ((n * n_nu + j) * channels + c) * ko;
                for (int k = 0; k < ko; ++k) qc[k] = FN(dot)(proj + (int64_t)k * pp, v, pp);
            }
        }
    }
    free(ag);
    return 0;
}

/* The backward of powers_forward: with g like q, da [N][C][K1] and dw like w (each
 * written where not NULL) are the gradients of sum g * q. */
static int FN(powers_backward)(const int64_t *dims, const REAL *a, const REAL *w,
                               const REAL *y, const REAL *proj, const REAL *g, REAL *da,
                               REAL *dw, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], k1 = (int)dims[2], n1 = (int)dims[3];
    const int n_nu = (int)dims[4], nu0 = (int)dims[5], pp = (int)dims[6], ko = (int)dims[7];
    REAL *ag = (REAL *)aligned_alloc(64, sizeof(REAL) * (size_t)pp * (2 * n1 + 1) + 64);
    if (ag == NULL) return 1;
    REAL *d_ag = ag + n1 * pp, *t = d_ag + n1 * pp;
    for (int64_t n = begin; n < end; ++n) {
        for (int c = 0; c < channels; ++c) {
            FN(node_grid)(a + (n * channels + c) * k1, y, n1, pp, ag);
            for (int d = 0; d < n1 * pp; ++d) d_ag[d] = 0;
            for (int j = 0; j < n_nu; ++j) {
                const int nu = nu0 + j;
                const int64_t row = (n * n_nu + j) * channels + c;
                const REAL *wc = w + row * n1, *gc = g + row * ko;
                /* t = nu X^(nu-1) * sum_k proj[k] g[k]: the gradient of X */
                for (int p = 0; p < pp; p += W) {
                    VW gv = gc[0] * LOAD(proj + p);
                    for (int k = 1; k < ko; ++k) gv += gc[k] * LOAD(proj + (int64_t)k * pp + p);
                    const VW x = FN(chunk_x)(ag + p, wc, n1, pp);
                    STORE(t + p) = ((REAL)nu * FN(power)(x, nu - 1)) * gv;
                }
                if (dw) {
                    REAL *dwc = dw + row * n1;
                    for (int l = 0; l < n1; ++l) dwc[l] = FN(dot)(ag + l * pp, t, pp);
                }
                if (da) {
                    for (int l = 0; l < n1; ++l) {
                        const REAL wl = wc[l];
                        for (int p = 0; p < pp; p += W)
                            STORE(d_ag + l * pp + p) += wl * LOAD(t + p);
                    }
                }
            }
            if (da) {
                REAL *dac = da + (n * channels + c) * k1;
                for (int l = 0; l < n1; ++l)
                    for (int k = l * l; k < (l + 1) * (l + 1); ++k)
                        dac[k] = FN(dot)(y + (int64_t)k * pp, d_ag + l * pp, pp);
            }
        }
    }
    free(ag);
    return 0;
}

#undef STORE
#undef LOAD
#undef W
