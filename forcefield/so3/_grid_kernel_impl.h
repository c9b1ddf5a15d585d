/* Body of the fused separable grid Gaunt product for one floating-point type.
 *
 * Included by _grid_kernel.c once per type and instruction set, with REAL, VEC (a GCC
 * vector of LANES REALs: one lane per row) and FN(name) defined.  See _grid_kernel.c for the algorithm and table layouts.
 */

INLINE void FN(ring_inputs)(const REAL *leg, int lmax, const VEC *X, VEC *A)
{
    /* A[m + lmax] = sum_{l >= |m|} leg[m + lmax][l] * X[l*l + l + m]; +m and -m share the
     * range of l, so they are summed together (two independent chains) */
    const int lp = lmax + 1;
    {
        const REAL *row = leg + lmax * lp;
        VEC acc = row[0] * X[0];
        for (int l = 1; l <= lmax; ++l) acc += row[l] * X[l * l + l];
        A[lmax] = acc;
    }
    for (int m = 1; m <= lmax; ++m) {
        const REAL *plus = leg + (lmax + m) * lp, *minus = leg + (lmax - m) * lp;
        VEC acc_p = plus[m] * X[m * m + 2 * m], acc_n = minus[m] * X[m * m];
        for (int l = m + 1; l <= lmax; ++l) {
            acc_p += plus[l] * X[l * l + l + m];
            acc_n += minus[l] * X[l * l + l - m];
        }
        A[lmax + m] = acc_p;
        A[lmax - m] = acc_n;
    }
}

INLINE void FN(ring_azimuth)(const REAL *az_cos, const REAL *az_sin, int az_stride, int lmax,
                             int n_half, const VEC *A, VEC *C, VEC *S)
{
    /* C[k] = sum_{m >= 0} cos(m alpha_k) A_m, S[k] = sum_{m > 0} sin(m alpha_k) A_{-m};
     * two azimuths at a time: four independent accumulation chains */
    int k = 0;
    for (; k + 1 < n_half; k += 2) {
        const REAL *cs0 = az_cos + k * az_stride, *sn0 = az_sin + k * az_stride;
        const REAL *cs1 = cs0 + az_stride, *sn1 = sn0 + az_stride;
        VEC c0 = A[lmax], c1 = A[lmax], s0 = A[lmax] * (REAL)0, s1 = s0;
        for (int m = 1; m <= lmax; ++m) {
            const VEC ap = A[lmax + m], an = A[lmax - m];
            c0 += cs0[m] * ap;
            s0 += sn0[m] * an;
            c1 += cs1[m] * ap;
            s1 += sn1[m] * an;
        }
        C[k] = c0;
        S[k] = s0;
        C[k + 1] = c1;
        S[k + 1] = s1;
    }
    for (; k < n_half; ++k) {
        const REAL *cs = az_cos + k * az_stride, *sn = az_sin + k * az_stride;
        VEC c = A[lmax], s = A[lmax] * (REAL)0;
        for (int m = 1; m <= lmax; ++m) {
            c += cs[m] * A[lmax + m];
            s += sn[m] * A[lmax - m];
        }
        C[k] = c;
        S[k] = s;
    }
}

/* rows [row_begin, row_end) of the product; row r = o * n_inner + i reads
 * x1 + o * x1_outer + i * x1_inner (likewise x2) and writes out + r * d_out. */
INLINE void FN(grid_rows)(const int64_t *shape, const REAL *x1, const int64_t *x1_strides,
                          const REAL *x2, const int64_t *x2_strides, REAL *out,
                          int64_t row_begin, int64_t row_end, const int32_t *dims,
                          const REAL *leg1, const REAL *leg2, const REAL *leg_out,
                          const REAL *az_cos, const REAL *az_sin,
                          const REAL *out_cos, const REAL *out_sin, VEC *scratch)
{
    const int64_t n_inner = shape[1];
    const int l1 = dims[0], l2 = dims[1], lo = dims[2], n_beta = dims[3], n_half = dims[4];
    const int az_stride = dims[5];
    const int d1 = (l1 + 1) * (l1 + 1), d2 = (l2 + 1) * (l2 + 1), d_out = (lo + 1) * (lo + 1);
    const int m1 = 2 * l1 + 1, m2 = 2 * l2 + 1, m_out = 2 * lo + 1;

    VEC *X1 = scratch;              /* [d1] */
    VEC *X2 = X1 + d1;              /* [d2] */
    VEC *A1 = X2 + d2;              /* [m1] */
    VEC *A2 = A1 + m1;              /* [m2] */
    VEC *C1 = A2 + m2;              /* [n_half] each */
    VEC *S1 = C1 + n_half;
    VEC *C2 = S1 + n_half;
    VEC *S2 = C2 + n_half;
    VEC *Sm = S2 + n_half;          /* [m_out] */
    VEC *O = Sm + m_out;            /* [d_out] */
    /* the same buffers seen as scalars, for the transposing loads and stores */
    REAL *x1_lanes = (REAL *)X1, *x2_lanes = (REAL *)X2;
    const REAL *out_lanes = (const REAL *)O;

    for (int64_t start = row_begin; start < row_end; start += LANES) {
        const int64_t count = row_end - start < LANES ? row_end - start : LANES;
        /* gather LANES rows, transposed (a short last block repeats its last row) */
        for (int w = 0; w < LANES; ++w) {
            const int64_t r = start + (w < count ? w : count - 1);
            const int64_t o = r / n_inner, i = r % n_inner;
            const REAL *p1 = x1 + o * x1_strides[0] + i * x1_strides[1];
            const REAL *p2 = x2 + o * x2_strides[0] + i * x2_strides[1];
            for (int d = 0; d < d1; ++d) x1_lanes[d * LANES + w] = p1[d];
            for (int d = 0; d < d2; ++d) x2_lanes[d * LANES + w] = p2[d];
        }
        for (int d = 0; d < d_out; ++d) O[d] = X1[0] * (REAL)0;

        for (int j = 0; j < n_beta; ++j) {
            FN(ring_inputs)(leg1 + (int64_t)j * m1 * (l1 + 1), l1, X1, A1);
            FN(ring_inputs)(leg2 + (int64_t)j * m2 * (l2 + 1), l2, X2, A2);
            FN(ring_azimuth)(az_cos, az_sin, az_stride, l1, n_half, A1, C1, S1);
            FN(ring_azimuth)(az_cos, az_sin, az_stride, l2, n_half, A2, C2, S2);
            /* product, folded over alpha -> -alpha: even part into C1, odd part into S1 */
            for (int k = 0; k < n_half; ++k) {
                const VEC c1 = C1[k], s1 = S1[k], c2 = C2[k], s2 = S2[k];
                C1[k] = c1 * c2 + s1 * s2;
                S1[k] = c1 * s2 + s1 * c2;
            }
            /* azimuthal projection: Sm[m] = sum_k mu_k cos/sin(|m| alpha_k) even/odd part;
             * two orders at a time: four independent chains */
            int m = 0;
            for (; m + 1 <= lo; m += 2) {
                VEC e0 = C1[0] * out_cos[m], o0 = S1[0] * out_sin[m];
                VEC e1 = C1[0] * out_cos[m + 1], o1 = S1[0] * out_sin[m + 1];
                for (int k = 1; k < n_half; ++k) {
                    const REAL *cs = out_cos + k * (lo + 1) + m, *sn = out_sin + k * (lo + 1) + m;
                    e0 += cs[0] * C1[k];
                    o0 += sn[0] * S1[k];
                    e1 += cs[1] * C1[k];
                    o1 += sn[1] * S1[k];
                }
                Sm[lo + m] = e0;
                if (m > 0) Sm[lo - m] = o0;
                Sm[lo + m + 1] = e1;
                Sm[lo - m - 1] = o1;
            }
            for (; m <= lo; ++m) {
                VEC even = C1[0] * out_cos[m], odd = S1[0] * out_sin[m];
                for (int k = 1; k < n_half; ++k) {
                    even += out_cos[k * (lo + 1) + m] * C1[k];
                    odd += out_sin[k * (lo + 1) + m] * S1[k];
                }
                Sm[lo + m] = even;
                if (m > 0) Sm[lo - m] = odd;
            }
            /* polar projection of this ring, accumulated over rings */
            const REAL *ring = leg_out + (int64_t)j * m_out * (lo + 1);
            for (int m = -lo; m <= lo; ++m) {
                const REAL *row = ring + (m + lo) * (lo + 1);
                const VEC s = Sm[m + lo];
                const int am = m < 0 ? -m : m;
                for (int l = am; l <= lo; ++l) O[l * l + l + m] += row[l] * s;
            }
        }
        for (int w = 0; w < count; ++w) {
            REAL *dst = out + (start + w) * d_out;
            for (int d = 0; d < d_out; ++d) dst[d] = out_lanes[d * LANES + w];
        }
    }
}

static int FN(gaunt_grid)(const int64_t *shape, const REAL *x1, const int64_t *x1_strides,
                          const REAL *x2, const int64_t *x2_strides, REAL *out,
                          int64_t row_begin, int64_t row_end, const int32_t *dims,
                          const REAL *leg1, const REAL *leg2, const REAL *leg_out,
                          const REAL *az_cos, const REAL *az_sin,
                          const REAL *out_cos, const REAL *out_sin)
{
    const int l1 = dims[0], l2 = dims[1], lo = dims[2], n_half = dims[4];
    const size_t count = (size_t)((l1 + 1) * (l1 + 1) + (l2 + 1) * (l2 + 1) + 2 * l1 + 1
                                  + 2 * l2 + 1 + 4 * n_half + 2 * lo + 1 + (lo + 1) * (lo + 1));
    VEC *scratch = (VEC *)aligned_alloc(sizeof(VEC), count * sizeof(VEC));
    if (scratch == NULL) return 1;
    FN(grid_rows)(shape, x1, x1_strides, x2, x2_strides, out, row_begin, row_end, dims, leg1,
                  leg2, leg_out, az_cos, az_sin, out_cos, out_sin, scratch);
    free(scratch);
    return 0;
}
