/* Body of the fused Gaunt convolution kernels for one floating-point type.
 *
 * Included by _conv_kernel.c once per (type, instruction set) with REAL and FN(name)
 * defined.  See _conv_kernel.c for the algorithm, the argument layouts and the scalar T
 * whose partial derivatives these functions compute.  Grid loops run in chunks of W
 * points, one 32-byte GCC vector VW (8 floats or 4 doubles: one AVX register) that stays in
 * registers; sums over points keep W partial sums added in a fixed order.
 */

#define W ((int)(sizeof(VW) / sizeof(REAL)))
#define MAXL 8 /* degrees 0..7 per operand */
#define LOAD(ptr) (*(const VW *)(ptr))
#define STORE(ptr) (*(VW *)(ptr))
#define VZERO ((VW){0}) /* all lanes 0 (never a load times 0: that reads memory and keeps NaN) */

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

/* ds[l m] = sum_p ysh[l m][p] d_yg[l][p]: the partial for the edge harmonics from the
 * partial for the filter's per-degree grid values (the transpose of filter_grid) */
INLINE void FN(sh_partial)(const REAL *restrict ysh, const REAL *restrict d_yg, int n2,
                           int pp, REAL *restrict ds)
{
    for (int l = 0; l < n2; ++l)
        for (int k = l * l; k < (l + 1) * (l + 1); ++k)
            ds[k] = FN(dot)(ysh + (int64_t)k * pp, d_yg + l * pp, pp);
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

/* horizontal sum of a vector, in a fixed order */
INLINE REAL FN(hsum)(VW acc)
{
    REAL t[8];
    memcpy(t, &acc, sizeof(acc));
    if (W == 8) return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* One incoming edge of a receiving node: zi[c][p] += X[c][p] * Yv[c][p] for every channel.
 * Always inlined into a switch over small constant (n1, n2, has_wn), so that the loops
 * over degrees unroll and the weights and sums stay in registers. */
INLINE void FN(receive_edge)(const REAL *restrict hs, const REAL *we, int64_t ws1,
                             const REAL *re, int64_t rs1, const REAL *restrict yg,
                             REAL *restrict zi, int channels, int n1, int n2, int pp,
                             int has_wn)
{
    for (int c = 0; c < channels; ++c) {
        const REAL *hc = hs + (int64_t)c * n1 * pp, *rc = re + c * rs1;
        const REAL *wc = has_wn ? we + c * ws1 : NULL;
        REAL wl[MAXL], rl[MAXL];
        for (int l = 0; l < n1; ++l) wl[l] = has_wn ? wc[l] : (REAL)1;
        for (int l = 0; l < n2; ++l) rl[l] = rc[l];
        REAL *restrict zc = zi + (int64_t)c * pp;
        for (int p = 0; p < pp; p += W) {
            VW x = wl[0] * LOAD(hc + p), y = rl[0] * LOAD(yg + p);
            for (int l = 1; l < n1; ++l) x += wl[l] * LOAD(hc + l * pp + p);
            for (int l = 1; l < n2; ++l) y += rl[l] * LOAD(yg + l * pp + p);
            STORE(zc + p) += x * y;
        }
    }
}

/* One outgoing edge of a sending node, every channel: with ty = G Yv (the gradient of X)
 * and tx = G X (the gradient of Yv), dh += w ty, d_wn = sum_p hg ty, d_r = sum_p Yg tx,
 * d_yg += r tx (outputs NULL are skipped).  Specialised like receive_edge. */
INLINE void FN(send_edge)(const REAL *restrict hn, REAL *restrict dh, const REAL *we,
                          int64_t ws1, const REAL *re, int64_t rs1, const REAL *restrict yg,
                          REAL *restrict d_yg, const REAL *restrict ge, REAL *restrict dwe,
                          REAL *restrict dre, int channels, int n1, int n2, int pp,
                          int has_wn)
{
    const int need_y = dh != NULL || dwe != NULL, need_x = dre != NULL || d_yg != NULL;
    for (int c = 0; c < channels; ++c) {
        const REAL *hc = hn + (int64_t)c * n1 * pp, *gc = ge + (int64_t)c * pp;
        const REAL *rc = re + c * rs1;
        const REAL *wc = has_wn ? we + c * ws1 : NULL;
        REAL *dc = dh ? dh + (int64_t)c * n1 * pp : NULL;
        REAL wl[MAXL], rl[MAXL];
        for (int l = 0; l < n1; ++l) wl[l] = has_wn ? wc[l] : (REAL)1;
        for (int l = 0; l < n2; ++l) rl[l] = rc[l];
        VW acc_w[MAXL], acc_r[MAXL];
        for (int l = 0; l < n1; ++l) acc_w[l] = VZERO;
        for (int l = 0; l < n2; ++l) acc_r[l] = VZERO;
        for (int p = 0; p < pp; p += W) {
            const VW gv = LOAD(gc + p);
            if (need_y) {
                VW y = rl[0] * LOAD(yg + p);
                for (int l = 1; l < n2; ++l) y += rl[l] * LOAD(yg + l * pp + p);
                const VW ty = gv * y;
                if (dc)
                    for (int l = 0; l < n1; ++l) STORE(dc + l * pp + p) += wl[l] * ty;
                if (dwe)
                    for (int l = 0; l < n1; ++l) acc_w[l] += LOAD(hc + l * pp + p) * ty;
            }
            if (need_x) {
                VW x = wl[0] * LOAD(hc + p);
                for (int l = 1; l < n1; ++l) x += wl[l] * LOAD(hc + l * pp + p);
                const VW tx = gv * x;
                if (dre)
                    for (int l = 0; l < n2; ++l) acc_r[l] += LOAD(yg + l * pp + p) * tx;
                if (d_yg)
                    for (int l = 0; l < n2; ++l) STORE(d_yg + l * pp + p) += rl[l] * tx;
            }
        }
        if (dwe)
            for (int l = 0; l < n1; ++l) dwe[c * n1 + l] = FN(hsum)(acc_w[l]);
        if (dre)
            for (int l = 0; l < n2; ++l) dre[c * n2 + l] = FN(hsum)(acc_r[l]);
    }
}

/* the (n1, n2, has_wn) of the model's layers get their own unrolled copies */
#define SPECIALISE(CALL)                                                                     \
    switch (n1 * 100 + n2 * 10 + has_wn) {                                                   \
    case 120: CALL(1, 2, 0); break;                                                          \
    case 130: CALL(1, 3, 0); break;                                                          \
    case 140: CALL(1, 4, 0); break;                                                          \
    case 221: CALL(2, 2, 1); break;                                                          \
    case 231: CALL(2, 3, 1); break;                                                          \
    case 331: CALL(3, 3, 1); break;                                                          \
    case 341: CALL(3, 4, 1); break;                                                          \
    case 441: CALL(4, 4, 1); break;                                                          \
    default: CALL(n1, n2, has_wn); break;                                                    \
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
    const int has_wn = wn != NULL;
    if (n1 > MAXL || n2 > MAXL) return 2;
    REAL *yg = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * n2);
    if (yg == NULL) return 1;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t i = begin; i < end; ++i) {
        REAL *restrict zi = z + i * channels * pp;
        for (int64_t d = 0; d < (int64_t)channels * pp; ++d) zi[d] = 0;
        for (int64_t q = ptr[i]; q < ptr[i + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *hs = hg + sender[e] * node_stride;
            const REAL *we = has_wn ? wn + e * wn_strides[0] : NULL;
            const REAL *re = r + e * r_strides[0];
            FN(filter_grid)(sh + e * sh_stride, ysh, n2, pp, yg);
#define RECEIVE(A, B, H) \
    FN(receive_edge)(hs, we, wn_strides[1], re, r_strides[1], yg, zi, channels, A, B, pp, H)
            SPECIALISE(RECEIVE)
#undef RECEIVE
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
    const int has_wn = wn != NULL;
    if (n1 > MAXL || n2 > MAXL) return 2;
    REAL *yg = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * 2 * n2);
    if (yg == NULL) return 1;
    REAL *d_yg = d_sh ? yg + n2 * pp : NULL;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t n = begin; n < end; ++n) {
        const REAL *hn = hg + n * node_stride;
        REAL *dh = d_hg ? d_hg + n * node_stride : NULL;
        if (dh) for (int64_t d = 0; d < node_stride; ++d) dh[d] = 0;
        for (int64_t q = ptr[n]; q < ptr[n + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *ge = g + receiver[e] * channels * pp;
            const REAL *we = has_wn ? wn + e * wn_strides[0] : NULL;
            const REAL *re = r + e * r_strides[0];
            REAL *dwe = d_wn ? d_wn + e * channels * n1 : NULL;
            REAL *dre = d_r ? d_r + e * channels * n2 : NULL;
            FN(filter_grid)(sh + e * sh_stride, ysh, n2, pp, yg);
            if (d_yg) for (int d = 0; d < n2 * pp; ++d) d_yg[d] = 0;
#define SEND(A, B, H)                                                                          \
    FN(send_edge)(hn, dh, we, wn_strides[1], re, r_strides[1], yg, d_yg, ge, dwe, dre, channels, \
                  A, B, pp, H)
            SPECIALISE(SEND)
#undef SEND
            if (d_sh) FN(sh_partial)(ysh, d_yg, n2, pp, d_sh + e * k2);
        }
    }
    free(yg);
    return 0;
}

/* The double backward of conv_senders.  Given incoming gradients u0 (like hg), u1 (like wn;
 * unused without node weights), u2 (like r) and u3 (like sh) of the four partials, the
 * scalar S = <u0, dT/dhg> + <u1, dT/dwn> + <u2, dT/dr> + <u3, dT/dsh> is the sum of T with
 * one argument replaced by its u.  On the grid, with
 *   X' = sum_l1 (wn u0 + u1 hg),   Yv' = sum_l2 (u2 Yg + r Yu)   (Yu: the grid values of u3),
 * its partials are
 *   dS/dhg = sum_e G (u1 Yv + wn Yv'),   dS/dwn = sum_p G (u0 Yv + hg Yv'),
 *   dS/dr  = sum_p G (Yg X' + Yu X),     dS/dYg = sum_c G (r X' + u2 X),
 *   dS/dG  = sum_e (X' Yv + X Yv')       (conv_double_receivers),
 * each computed in one pass instead of one pass per substituted argument.
 * strides = {wn: s0, s1; r: s0, s1; sh: s0; u1: s0, s1; u2: s0, s1; u3: s0}. */

/* X, X', Yv and Yv' of one channel on one chunk (without node weights wl = 1, vl = 0) */
#define DOUBLE_CHUNK(p)                                                                      \
    VW x = wl[0] * LOAD(hc + (p)), xp = wl[0] * LOAD(uc + (p)) + vl[0] * LOAD(hc + (p));     \
    for (int l = 1; l < n1; ++l) {                                                           \
        const VW hv = LOAD(hc + l * pp + (p));                                               \
        x += wl[l] * hv;                                                                     \
        xp += wl[l] * LOAD(uc + l * pp + (p)) + vl[l] * hv;                                  \
    }                                                                                        \
    VW y = rl[0] * LOAD(yg + (p)), yp = ql[0] * LOAD(yg + (p)) + rl[0] * LOAD(yu + (p));     \
    for (int l = 1; l < n2; ++l) {                                                           \
        const VW gl = LOAD(yg + l * pp + (p));                                               \
        y += rl[l] * gl;                                                                     \
        yp += ql[l] * gl + rl[l] * LOAD(yu + l * pp + (p));                                  \
    }

/* the per-channel weights of one edge: wl, vl (node side), rl, ql (filter side) */
#define DOUBLE_WEIGHTS                                                                       \
    REAL wl[MAXL], vl[MAXL], rl[MAXL], ql[MAXL];                                             \
    for (int l = 0; l < n1; ++l) {                                                           \
        wl[l] = has_wn ? we[c * st[1] + l] : (REAL)1;                                        \
        vl[l] = has_wn ? ve[c * st[6] + l] : (REAL)0;                                        \
    }                                                                                        \
    for (int l = 0; l < n2; ++l) {                                                           \
        rl[l] = re[c * st[3] + l];                                                           \
        ql[l] = qe[c * st[8] + l];                                                           \
    }

INLINE void FN(send_edge_double)(const REAL *restrict hn, const REAL *restrict un,
                                 REAL *restrict dh, const REAL *we, const REAL *ve,
                                 const REAL *re, const REAL *qe, const int64_t *st,
                                 const REAL *restrict yg, const REAL *restrict yu,
                                 REAL *restrict d_yg, const REAL *restrict ge,
                                 REAL *restrict dwe, REAL *restrict dre, int channels, int n1,
                                 int n2, int pp, int has_wn)
{
    for (int c = 0; c < channels; ++c) {
        const REAL *hc = hn + (int64_t)c * n1 * pp, *uc = un + (int64_t)c * n1 * pp;
        const REAL *gc = ge + (int64_t)c * pp;
        REAL *dc = dh ? dh + (int64_t)c * n1 * pp : NULL;
        DOUBLE_WEIGHTS
        VW acc_w[MAXL], acc_r[MAXL];
        for (int l = 0; l < n1; ++l) acc_w[l] = VZERO;
        for (int l = 0; l < n2; ++l) acc_r[l] = VZERO;
        for (int p = 0; p < pp; p += W) {
            DOUBLE_CHUNK(p)
            const VW gv = LOAD(gc + p);
            const VW ty = gv * y, typ = gv * yp, tx = gv * x, txp = gv * xp;
            if (dc)
                for (int l = 0; l < n1; ++l) STORE(dc + l * pp + p) += vl[l] * ty + wl[l] * typ;
            if (dwe)
                for (int l = 0; l < n1; ++l)
                    acc_w[l] += LOAD(uc + l * pp + p) * ty + LOAD(hc + l * pp + p) * typ;
            if (dre)
                for (int l = 0; l < n2; ++l)
                    acc_r[l] += LOAD(yg + l * pp + p) * txp + LOAD(yu + l * pp + p) * tx;
            if (d_yg)
                for (int l = 0; l < n2; ++l) STORE(d_yg + l * pp + p) += rl[l] * txp + ql[l] * tx;
        }
        if (dwe)
            for (int l = 0; l < n1; ++l) dwe[c * n1 + l] = FN(hsum)(acc_w[l]);
        if (dre)
            for (int l = 0; l < n2; ++l) dre[c * n2 + l] = FN(hsum)(acc_r[l]);
    }
}

INLINE void FN(receive_edge_double)(const REAL *restrict hs, const REAL *restrict us,
                                    const REAL *we, const REAL *ve, const REAL *re,
                                    const REAL *qe, const int64_t *st, const REAL *restrict yg,
                                    const REAL *restrict yu, REAL *restrict zi, int channels,
                                    int n1, int n2, int pp, int has_wn)
{
    for (int c = 0; c < channels; ++c) {
        const REAL *hc = hs + (int64_t)c * n1 * pp, *uc = us + (int64_t)c * n1 * pp;
        REAL *restrict zc = zi + (int64_t)c * pp;
        DOUBLE_WEIGHTS
        for (int p = 0; p < pp; p += W) {
            DOUBLE_CHUNK(p)
            STORE(zc + p) += xp * y + x * yp;
        }
    }
}

#undef DOUBLE_WEIGHTS
#undef DOUBLE_CHUNK

/* dS/dhg, dS/dwn, dS/dr and dS/dsh (each written where its pointer is not NULL) for the
 * sending nodes in [begin, end), like conv_senders. */
static int FN(conv_double_senders)(const int64_t *dims, const int64_t *st, const REAL *hg,
                                   const REAL *wn, const REAL *r, const REAL *sh,
                                   const REAL *ysh, const REAL *g, const REAL *u0,
                                   const REAL *u1, const REAL *u2, const REAL *u3,
                                   const int64_t *receiver, const int64_t *ptr,
                                   const int64_t *perm, REAL *d_hg, REAL *d_wn, REAL *d_r,
                                   REAL *d_sh, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], n1 = (int)dims[2], n2 = (int)dims[3];
    const int k2 = (int)dims[4], pp = (int)dims[5];
    const int has_wn = wn != NULL;
    if (n1 > MAXL || n2 > MAXL) return 2;
    REAL *yg = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * 3 * n2);
    if (yg == NULL) return 1;
    REAL *yu = yg + n2 * pp, *d_yg = d_sh ? yu + n2 * pp : NULL;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t n = begin; n < end; ++n) {
        const REAL *hn = hg + n * node_stride, *un = u0 + n * node_stride;
        REAL *dh = d_hg ? d_hg + n * node_stride : NULL;
        if (dh) for (int64_t d = 0; d < node_stride; ++d) dh[d] = 0;
        for (int64_t q = ptr[n]; q < ptr[n + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *ge = g + receiver[e] * channels * pp;
            const REAL *we = has_wn ? wn + e * st[0] : NULL, *ve = has_wn ? u1 + e * st[5] : NULL;
            const REAL *re = r + e * st[2], *qe = u2 + e * st[7];
            REAL *dwe = d_wn ? d_wn + e * channels * n1 : NULL;
            REAL *dre = d_r ? d_r + e * channels * n2 : NULL;
            FN(filter_grid)(sh + e * st[4], ysh, n2, pp, yg);
            FN(filter_grid)(u3 + e * st[9], ysh, n2, pp, yu);
            if (d_yg) for (int d = 0; d < n2 * pp; ++d) d_yg[d] = 0;
#define SEND(A, B, H)                                                                          \
    FN(send_edge_double)(hn, un, dh, we, ve, re, qe, st, yg, yu, d_yg, ge, dwe, dre, channels, \
                         A, B, pp, H)
            SPECIALISE(SEND)
#undef SEND
            if (d_sh) FN(sh_partial)(ysh, d_yg, n2, pp, d_sh + e * k2);
        }
    }
    free(yg);
    return 0;
}

/* dS/dG [N][C][pp] for the receiving nodes in [begin, end), like conv_receivers. */
static int FN(conv_double_receivers)(const int64_t *dims, const int64_t *st, const REAL *hg,
                                     const REAL *wn, const REAL *r, const REAL *sh,
                                     const REAL *ysh, const REAL *u0, const REAL *u1,
                                     const REAL *u2, const REAL *u3, const int64_t *sender,
                                     const int64_t *ptr, const int64_t *perm, REAL *z,
                                     int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], n1 = (int)dims[2], n2 = (int)dims[3], pp = (int)dims[5];
    const int has_wn = wn != NULL;
    if (n1 > MAXL || n2 > MAXL) return 2;
    REAL *yg = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * 2 * n2);
    if (yg == NULL) return 1;
    REAL *yu = yg + n2 * pp;
    const int64_t node_stride = (int64_t)channels * n1 * pp;
    for (int64_t i = begin; i < end; ++i) {
        REAL *restrict zi = z + i * channels * pp;
        for (int64_t d = 0; d < (int64_t)channels * pp; ++d) zi[d] = 0;
        for (int64_t q = ptr[i]; q < ptr[i + 1]; ++q) {
            const int64_t e = perm[q];
            const REAL *hs = hg + sender[e] * node_stride, *us = u0 + sender[e] * node_stride;
            const REAL *we = has_wn ? wn + e * st[0] : NULL, *ve = has_wn ? u1 + e * st[5] : NULL;
            const REAL *re = r + e * st[2], *qe = u2 + e * st[7];
            FN(filter_grid)(sh + e * st[4], ysh, n2, pp, yg);
            FN(filter_grid)(u3 + e * st[9], ysh, n2, pp, yu);
#define RECEIVE(A, B, H) \
    FN(receive_edge_double)(hs, us, we, ve, re, qe, st, yg, yu, zi, channels, A, B, pp, H)
            SPECIALISE(RECEIVE)
#undef RECEIVE
        }
    }
    free(yg);
    return 0;
}

#undef SPECIALISE

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

/* x^nu for nu >= 0 */
INLINE VW FN(power)(VW x, int nu)
{
    if (nu == 0) return x * (REAL)0 + (REAL)1;
    VW v = x;
    for (int k = 1; k < nu; ++k) v *= x;
    return v;
}

static int FN(powers_forward)(const int64_t *dims, const REAL *a, const REAL *w, const REAL *y,
                              const REAL *proj, REAL *q, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], k1 = (int)dims[2], n1 = (int)dims[3];
    const int n_nu = (int)dims[4], nu0 = (int)dims[5], pp = (int)dims[6], ko = (int)dims[7];
    REAL *ag = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * (n1 + 1));
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
    REAL *ag = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * (2 * n1 + 1));
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

/* The double backward of powers_forward: given the incoming gradients u (for da, like a;
 * NULL: zero) and vw (for dw, like w; NULL: zero) of the backward's outputs, the gradients
 * of S = <u, da> + <vw, dw> with respect to a, w and g (each written where not NULL).
 * With t = nu X^(nu-1) gv (gv = sum_k proj[k] g[k]), B = sum_l (w_l U_l + vw_l A_l) (U the
 * per-degree grid values of u) and s = nu (nu-1) X^(nu-2) gv B:
 *   ga[l m] = sum_p y[l m] sum_nu (w_l s + vw_l t),  gw[l] = sum_p (s A_l + t U_l),
 *   gg[k] = sum_p proj[k] nu X^(nu-1) B. */
static int FN(powers_double)(const int64_t *dims, const REAL *a, const REAL *w, const REAL *y,
                             const REAL *proj, const REAL *g, const REAL *u, const REAL *vw,
                             REAL *ga, REAL *gw, REAL *gg, int64_t begin, int64_t end)
{
    const int channels = (int)dims[1], k1 = (int)dims[2], n1 = (int)dims[3];
    const int n_nu = (int)dims[4], nu0 = (int)dims[5], pp = (int)dims[6], ko = (int)dims[7];
    REAL *ag = (REAL *)scratch_alloc(sizeof(REAL) * (size_t)pp * (3 * n1 + 3));
    if (ag == NULL) return 1;
    REAL *ug = ag + n1 * pp, *d_ag = ug + n1 * pp, *s = d_ag + n1 * pp, *t = s + pp, *m = t + pp;
    for (int64_t n = begin; n < end; ++n) {
        for (int c = 0; c < channels; ++c) {
            const int64_t node_row = n * channels + c;
            FN(node_grid)(a + node_row * k1, y, n1, pp, ag);
            if (u) FN(node_grid)(u + node_row * k1, y, n1, pp, ug);
            for (int d = 0; d < n1 * pp; ++d) d_ag[d] = 0;
            for (int j = 0; j < n_nu; ++j) {
                const int nu = nu0 + j;
                const int64_t row = (n * n_nu + j) * channels + c;
                const REAL *wc = w + row * n1, *gc = g + row * ko;
                const REAL *vc = vw ? vw + row * n1 : NULL;
                for (int p = 0; p < pp; p += W) {
                    VW gv = gc[0] * LOAD(proj + p);
                    for (int k = 1; k < ko; ++k) gv += gc[k] * LOAD(proj + (int64_t)k * pp + p);
                    const VW x = FN(chunk_x)(ag + p, wc, n1, pp);
                    VW b = VZERO;
                    if (u) b += FN(chunk_x)(ug + p, wc, n1, pp);
                    if (vc) b += FN(chunk_x)(ag + p, vc, n1, pp);
                    const VW xm2 = FN(power)(x, nu - 2), xm1 = FN(power)(x, nu - 1);
                    STORE(t + p) = ((REAL)nu * xm1) * gv;
                    STORE(s + p) = ((REAL)(nu * (nu - 1)) * xm2) * gv * b;
                    STORE(m + p) = ((REAL)nu * xm1) * b;
                }
                if (gw) {
                    REAL *gwc = gw + row * n1;
                    for (int l = 0; l < n1; ++l) {
                        REAL acc = FN(dot)(ag + l * pp, s, pp);
                        if (u) acc += FN(dot)(ug + l * pp, t, pp);
                        gwc[l] = acc;
                    }
                }
                if (ga) {
                    for (int l = 0; l < n1; ++l) {
                        const REAL wl = wc[l], vl = vc ? vc[l] : (REAL)0;
                        for (int p = 0; p < pp; p += W)
                            STORE(d_ag + l * pp + p) += wl * LOAD(s + p) + vl * LOAD(t + p);
                    }
                }
                if (gg) {
                    REAL *ggc = gg + row * ko;
                    for (int k = 0; k < ko; ++k) ggc[k] = FN(dot)(proj + (int64_t)k * pp, m, pp);
                }
            }
            if (ga) {
                REAL *gac = ga + node_row * k1;
                for (int l = 0; l < n1; ++l)
                    for (int k = l * l; k < (l + 1) * (l + 1); ++k)
                        gac[k] = FN(dot)(y + (int64_t)k * pp, d_ag + l * pp, pp);
            }
        }
    }
    free(ag);
    return 0;
}

#undef VZERO
#undef STORE
#undef LOAD
#undef MAXL
#undef W
