/* Body of the fused separable grid Gaunt product for one floating-point type.
 *
 * Included by grid_kernel_impl.h once per type, with REAL, VEC (a GCC vector of VL
 * REALs), VL and FN(name) defined.  A block of rows is NV vectors of VL rows
 * (one SIMD lane per row): every table entry loaded is used for NV independent
 * multiply-adds.  See grid_kernel.c for the algorithm and the table layouts.
 */

#define NV 4
#define ROWS (NV * VL)
#define FOR_V for (int v = 0; v < NV; ++v)

INLINE void FN(ring_inputs)(const REAL *leg, int lmax, const VEC *X, VEC *A)
{
    /* A[m + lmax] = sum_{l >= |m|} leg[m + lmax][l] * X[l*l + l + m]; +m and -m share the
     * range of l, so they are summed together */
    const int lp = lmax + 1;
    {
        const REAL *row = leg + lmax * lp;
        VEC acc[NV];
        FOR_V acc[v] = row[0] * X[v];
        for (int l = 1; l <= lmax; ++l) {
            const REAL c = row[l];
            const VEC *x = X + (l * l + l) * NV;
            FOR_V acc[v] += c * x[v];
        }
        FOR_V A[lmax * NV + v] = acc[v];
    }
    for (int m = 1; m <= lmax; ++m) {
        const REAL *plus = leg + (lmax + m) * lp, *minus = leg + (lmax - m) * lp;
        VEC acc_p[NV], acc_n[NV];
        FOR_V {
            acc_p[v] = plus[m] * X[(m * m + 2 * m) * NV + v];
            acc_n[v] = minus[m] * X[(m * m) * NV + v];
        }
        for (int l = m + 1; l <= lmax; ++l) {
            const REAL cp = plus[l], cn = minus[l];
            const VEC *xp = X + (l * l + l + m) * NV, *xn = X + (l * l + l - m) * NV;
            FOR_V {
                acc_p[v] += cp * xp[v];
                acc_n[v] += cn * xn[v];
            }
        }
        FOR_V {
            A[(lmax + m) * NV + v] = acc_p[v];
            A[(lmax - m) * NV + v] = acc_n[v];
        }
    }
}

INLINE void FN(ring_azimuth)(const REAL *az_cos, const REAL *az_sin, int az_stride, int lmax,
                             int n_half, const VEC *A, VEC *C, VEC *S)
{
    /* C[k] = sum_{m >= 0} cos(m alpha_k) A_m, S[k] = sum_{m > 0} sin(m alpha_k) A_{-m} */
    for (int k = 0; k < n_half; ++k) {
        const REAL *cs = az_cos + k * az_stride, *sn = az_sin + k * az_stride;
        VEC c[NV], s[NV];
        FOR_V {
            c[v] = A[lmax * NV + v];
            s[v] = (VEC){0};
        }
        for (int m = 1; m <= lmax; ++m) {
            const REAL cm = cs[m], sm = sn[m];
            const VEC *ap = A + (lmax + m) * NV, *an = A + (lmax - m) * NV;
            FOR_V {
                c[v] += cm * ap[v];
                s[v] += sm * an[v];
            }
        }
        FOR_V {
            C[k * NV + v] = c[v];
            S[k * NV + v] = s[v];
        }
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

    /* each entry below is NV vectors: one block of ROWS rows */
    VEC *X1 = scratch;                   /* [d1] */
    VEC *X2 = X1 + d1 * NV;              /* [d2] */
    VEC *A1 = X2 + d2 * NV;              /* [m1] */
    VEC *A2 = A1 + m1 * NV;              /* [m2] */
    VEC *C1 = A2 + m2 * NV;              /* [n_half] each */
    VEC *S1 = C1 + n_half * NV;
    VEC *C2 = S1 + n_half * NV;
    VEC *S2 = C2 + n_half * NV;
    VEC *Sm = S2 + n_half * NV;          /* [m_out] */
    VEC *O = Sm + m_out * NV;            /* [d_out] */
    /* the same buffers seen as scalars, for the transposing loads and stores */
    REAL *x1_lanes = (REAL *)X1, *x2_lanes = (REAL *)X2;
    const REAL *out_lanes = (const REAL *)O;

    for (int64_t start = row_begin; start < row_end; start += ROWS) {
        const int64_t count = row_end - start < ROWS ? row_end - start : ROWS;
        /* gather ROWS rows, transposed (a short last block repeats its last row) */
        for (int w = 0; w < ROWS; ++w) {
            const int64_t r = start + (w < count ? w : count - 1);
            const int64_t o = r / n_inner, i = r % n_inner;
            const REAL *p1 = x1 + o * x1_strides[0] + i * x1_strides[1];
            const REAL *p2 = x2 + o * x2_strides[0] + i * x2_strides[1];
            for (int d = 0; d < d1; ++d) x1_lanes[d * ROWS + w] = p1[d];
            for (int d = 0; d < d2; ++d) x2_lanes[d * ROWS + w] = p2[d];
        }
        for (int d = 0; d < d_out * NV; ++d) O[d] = (VEC){0};

        for (int j = 0; j < n_beta; ++j) {
            FN(ring_inputs)(leg1 + (int64_t)j * m1 * (l1 + 1), l1, X1, A1);
            FN(ring_inputs)(leg2 + (int64_t)j * m2 * (l2 + 1), l2, X2, A2);
            FN(ring_azimuth)(az_cos, az_sin, az_stride, l1, n_half, A1, C1, S1);
            FN(ring_azimuth)(az_cos, az_sin, az_stride, l2, n_half, A2, C2, S2);
            /* product, folded over alpha -> -alpha: even part into C1, odd part into S1 */
            for (int k = 0; k < n_half * NV; ++k) {
                const VEC c1 = C1[k], s1 = S1[k], c2 = C2[k], s2 = S2[k];
                C1[k] = c1 * c2 + s1 * s2;
                S1[k] = c1 * s2 + s1 * c2;
            }
            /* azimuthal projection: Sm[m] = sum_k mu_k cos/sin(|m| alpha_k) even/odd part */
            for (int m = 0; m <= lo; ++m) {
                VEC even[NV], odd[NV];
                FOR_V {
                    even[v] = C1[v] * out_cos[m];
                    odd[v] = S1[v] * out_sin[m];
                }
                for (int k = 1; k < n_half; ++k) {
                    const REAL cm = out_cos[k * (lo + 1) + m], sm = out_sin[k * (lo + 1) + m];
                    FOR_V {
                        even[v] += cm * C1[k * NV + v];
                        odd[v] += sm * S1[k * NV + v];
                    }
                }
                FOR_V Sm[(lo + m) * NV + v] = even[v];
                if (m > 0) FOR_V Sm[(lo - m) * NV + v] = odd[v];
            }
            /* polar projection of this ring, accumulated over rings */
            const REAL *ring = leg_out + (int64_t)j * m_out * (lo + 1);
            for (int m = -lo; m <= lo; ++m) {
                const REAL *row = ring + (m + lo) * (lo + 1);
                const VEC *s = Sm + (m + lo) * NV;
                const int am = m < 0 ? -m : m;
                for (int l = am; l <= lo; ++l) {
                    const REAL c = row[l];
                    VEC *o = O + (l * l + l + m) * NV;
                    FOR_V o[v] += c * s[v];
                }
            }
        }
        for (int w = 0; w < count; ++w) {
            REAL *dst = out + (start + w) * d_out;
            for (int d = 0; d < d_out; ++d) dst[d] = out_lanes[d * ROWS + w];
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
    const size_t count = (size_t)NV * ((l1 + 1) * (l1 + 1) + (l2 + 1) * (l2 + 1) + 2 * l1 + 1
                                       + 2 * l2 + 1 + 4 * n_half + 2 * lo + 1
                                       + (lo + 1) * (lo + 1));
    VEC *scratch = (VEC *)aligned_alloc(sizeof(VEC), count * sizeof(VEC));
    if (scratch == NULL) return 1;
    FN(grid_rows)(shape, x1, x1_strides, x2, x2_strides, out, row_begin, row_end, dims, leg1,
                  leg2, leg_out, az_cos, az_sin, out_cos, out_sin, scratch);
    free(scratch);
    return 0;
}

#undef FOR_V
#undef ROWS
#undef NV
