/* functional._Conv2d (stride 1, zero padding k/2) on gemm.c's exact matmul without the im2col
 * matrix: the input is copied once with its zero border (xp, [N, C, H + 2p, W + 2p]), and the
 * im2col matrix cols[(n, y, x), (c, di, dj)] = xp[n, c, y + di, x + dj] is read by the matmul's
 * packing through offset tables (gemm.h's mmtab). Its line exponents (the frexp exponent of a
 * line's max |x|, ref.matmul's slicing) are maxima over windows of xp, computed here.
 *
 * The values are those of the reference: the same integer slices (same exponents, same t), the
 * same exact integer sums, the same unscale; the input gradient is the matmul dy2 @ W folded
 * per sample by gemm.c's col2im epilogue (one float32 add at a time, row-major offsets).
 * Same build flags and argument as kernels.c.
 */
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

static inline uint32_t c_absbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u & 0x7fffffffu; }
static inline double c_pow2d(int k) { uint64_t u = (uint64_t)(k + 1023) << 52; double d; memcpy(&d, &u, 8); return d; }

/* xp[n, c] = x[n, c] inside a border of pad zeros (+0). */
static void pad_input(const float *x, float *xp, i64 nc, i64 H, i64 W, i64 pad) {
    i64 hp = H + 2 * pad, wp = W + 2 * pad;
    for (i64 i = 0; i < nc; i++) {
        float *d = xp + i * hp * wp;
        const float *s = x + i * H * W;
        memset(d, 0, (size_t)(pad * wp) * sizeof(float));
        for (i64 y = 0; y < H; y++) {
            float *row = d + (y + pad) * wp;
            memset(row, 0, (size_t)pad * sizeof(float));
            memcpy(row + pad, s + y * W, (size_t)W * sizeof(float));
            memset(row + pad + W, 0, (size_t)pad * sizeof(float));
        }
        memset(d + (pad + H) * wp, 0, (size_t)(pad * wp) * sizeof(float));
    }
}

/* Offsets into one padded sample: pixel p = y*W + x -> y*wp + x; column q = (c, di, dj) ->
 * c*hp*wp + di*wp + dj. */
static void conv_tables(i64 C, i64 H, i64 W, i64 k, i64 *poff, i64 *qoff) {
    i64 pad = k / 2, hp = H + 2 * pad, wp = W + 2 * pad;
    for (i64 y = 0; y < H; y++)
        for (i64 x = 0; x < W; x++) poff[y * W + x] = y * wp + x;
    for (i64 c = 0; c < C; c++)
        for (i64 di = 0; di < k; di++)
            for (i64 dj = 0; dj < k; dj++) qoff[(c * k + di) * k + dj] = c * hp * wp + di * wp + dj;
}

/* y[n] = ref.matmul(cols[n], w.reshape(O, -1).t()) + bias, stored as [O, H*W]; xp receives the
 * padded input (kept by the caller for the backward pass). t = ref.slice_bits(C*k*k). */
int conv2d_fwd(const float *x, const float *w, const float *bias, float *y, float *xp, i64 N, i64 C, i64 H, i64 W,
               i64 O, i64 k, int t, int nth) {
    i64 pad = k / 2, hp = H + 2 * pad, wp = W + 2 * pad, hw = H * W, ckk = C * k * k, plane = hp * wp;
    pad_input(x, xp, N * C, H, W, pad);
    i64 *poff = (i64 *)malloc((size_t)(hw + ckk) * sizeof(i64));
    int32_t *e = (int32_t *)malloc((size_t)(N * hw) * sizeof(int32_t));
    uint32_t *m = (uint32_t *)malloc((size_t)(plane + hp * W) * sizeof(uint32_t));
    if (!poff || !e || !m) { free(poff); free(e); free(m); return -1; }
    i64 *qoff = poff + hw;
    conv_tables(C, H, W, k, poff, qoff);
    uint32_t *hm = m + plane;
    /* A pixel's line is its k x k window over all channels: max over channels, then windows. */
    for (i64 n = 0; n < N; n++) {
        const float *xn = xp + n * C * plane;
        for (i64 i = 0; i < plane; i++) m[i] = c_absbits(xn[i]);
        for (i64 c = 1; c < C; c++) {
            const float *xc = xn + c * plane;
            for (i64 i = 0; i < plane; i++) { uint32_t v = c_absbits(xc[i]); m[i] = v > m[i] ? v : m[i]; }
        }
        for (i64 r = 0; r < hp; r++)
            for (i64 xx = 0; xx < W; xx++) {
                uint32_t v = 0;
                for (i64 dj = 0; dj < k; dj++) { uint32_t u = m[r * wp + xx + dj]; v = u > v ? u : v; }
                hm[r * W + xx] = v;
            }
        for (i64 yy = 0; yy < H; yy++)
            for (i64 xx = 0; xx < W; xx++) {
                uint32_t v = 0;
                for (i64 di = 0; di < k; di++) { uint32_t u = hm[(yy + di) * W + xx]; v = u > v ? u : v; }
                e[n * hw + yy * W + xx] = mm_exp_of_absbits(v);
            }
    }
    /* y[n] = W2 @ cols[n].t() (W2 = w as [O, C*k*k]): the reference's product transposed, the same
     * integer sums and scalings element by element, stored in y's own [O, H*W] layout. */
    mmtab tb = {poff, qoff, e};
    mmspec s;
    memset(&s, 0, sizeof(s));
    s.A = w; s.sab = 0; s.sam = ckk; s.sak = 1;
    s.B = xp; s.sbb = C * plane; s.tb = &tb;
    s.C = y; s.bias = bias; s.brow = 1;
    s.nb = N; s.M = O; s.K = ckk; s.N = hw; s.t = t; s.nth = nth;
    int rc = exact_mm_run(&s);
    free(poff); free(e); free(m);
    return rc;
}

/* Max |x| (as bits) of the weight gradient's line groups: ma[o] over row o of dy2.t() (one output
 * channel over all samples and pixels, also db's group), mb[q] over column q = (c, di, dj) of
 * cols (channel c over all samples, in the H x W window at (di, dj) of the padded plane). */
static int bwd_maxbits(const float *dy, const float *xp, i64 N, i64 C, i64 H, i64 W, i64 O, i64 k, uint32_t *ma,
                       uint32_t *mb) {
    i64 pad = k / 2, hp = H + 2 * pad, wp = W + 2 * pad, hw = H * W, plane = hp * wp;
    uint32_t *m = (uint32_t *)malloc((size_t)(plane + wp) * sizeof(uint32_t));
    if (!m) return -1;
    for (i64 o = 0; o < O; o++) {
        uint32_t v = 0;
        for (i64 n = 0; n < N; n++) {
            const float *d = dy + (n * O + o) * hw;
            for (i64 p = 0; p < hw; p++) { uint32_t u = c_absbits(d[p]); v = u > v ? u : v; }
        }
        ma[o] = v;
    }
    uint32_t *rm = m + plane;
    for (i64 c = 0; c < C; c++) {
        for (i64 i = 0; i < plane; i++) m[i] = 0;
        for (i64 n = 0; n < N; n++) {
            const float *xc = xp + (n * C + c) * plane;
            for (i64 i = 0; i < plane; i++) { uint32_t v = c_absbits(xc[i]); m[i] = v > m[i] ? v : m[i]; }
        }
        for (i64 di = 0; di < k; di++) {
            for (i64 xx = 0; xx < wp; xx++) {
                uint32_t v = 0;
                for (i64 yy = di; yy < di + H; yy++) { uint32_t u = m[yy * wp + xx]; v = u > v ? u : v; }
                rm[xx] = v;
            }
            for (i64 dj = 0; dj < k; dj++) {
                uint32_t v = 0;
                for (i64 xx = dj; xx < dj + W; xx++) v = rm[xx] > v ? rm[xx] : v;
                mb[(c * k + di) * k + dj] = v;
            }
        }
    }
    free(m);
    return 0;
}

/* dw = ref.matmul(dy2.t(), cols) and db = ref.exact_sum(dy2, 0) from the groups' exponents ea [O]
 * and eb [C*k*k]. With dw_sum / db_sum (not NULL) instead: the exact integer sums before the
 * unscale, as doubles (a row-sharded worker's partial sums; rowshard adds them across workers
 * and unscales once). */
static int bwd_weights(const float *dy, const float *xp, i64 N, i64 C, i64 H, i64 W, i64 O, i64 k, const int32_t *ea,
                       const int32_t *eb, int t_dw, int p_db, float *dw, float *db, double *dw_sum, double *db_sum,
                       int nth) {
    i64 pad = k / 2, hp = H + 2 * pad, wp = W + 2 * pad, hw = H * W, ckk = C * k * k, plane = hp * wp, K = N * hw;
    for (i64 o = 0; o < O; o++) {
        double sc = c_pow2d(p_db - ea[o]), s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (i64 n = 0; n < N; n++) { /* integer terms, partial sums < 2^53: any order is exact */
            const float *d = dy + (n * O + o) * hw;
            i64 p = 0;
            for (; p + 4 <= hw; p += 4) {
                s0 += trunc((double)d[p] * sc); s1 += trunc((double)d[p + 1] * sc);
                s2 += trunc((double)d[p + 2] * sc); s3 += trunc((double)d[p + 3] * sc);
            }
            for (; p < hw; p++) s0 += trunc((double)d[p] * sc);
        }
        if (db_sum) db_sum[o] = (s0 + s1) + (s2 + s3);
        else db[o] = (float)(((s0 + s1) + (s2 + s3)) * c_pow2d(ea[o] - p_db));
    }
    i64 *tab = (i64 *)malloc((size_t)(hw + ckk + O + 2 * K) * sizeof(i64));
    if (!tab) return -1;
    i64 *poff = tab, *qoff = tab + hw, *lo_a = qoff + ckk, *io_a = lo_a + O, *io_b = io_a + K;
    conv_tables(C, H, W, k, poff, qoff);
    for (i64 o = 0; o < O; o++) lo_a[o] = o * hw;
    for (i64 n = 0; n < N; n++)
        for (i64 p = 0; p < hw; p++) { io_a[n * hw + p] = n * O * hw + p; io_b[n * hw + p] = n * C * plane + poff[p]; }
    mmtab ta = {lo_a, io_a, ea}, tb = {qoff, io_b, eb};
    mmspec s;
    memset(&s, 0, sizeof(s));
    s.A = dy; s.ta = &ta;
    s.B = xp; s.tb = &tb;
    s.C = dw; s.raw = dw_sum; s.nb = 1; s.M = O; s.K = K; s.N = ckk; s.t = t_dw; s.nth = nth;
    int rc = exact_mm_run(&s);
    free(tab);
    return rc;
}

/* The backward of conv2d_fwd from dy [N, O, H, W] and the padded input xp:
 * dw = ref.matmul(dy2.t(), cols) (t_dw = ref.slice_bits(N*H*W)), db = ref.exact_sum(dy2, 0)
 * (grid bits p_db = ref.grid_bits(N*H*W)), and when dx is not NULL the input gradient: col2im
 * of ref.matmul(dy2, w.reshape(O, -1)) (t_dx = ref.slice_bits(O)); dy2 = dy as [N*H*W, O].
 * dw = NULL: the input gradient only (a row-sharded worker reduces dw and db across workers). */
int conv2d_bwd(const float *dy, const float *xp, const float *w, float *dw, float *db, float *dx, i64 N, i64 C, i64 H,
               i64 W, i64 O, i64 k, int t_dw, int p_db, int t_dx, int nth) {
    i64 hw = H * W, ckk = C * k * k;
    if (dw) {
        uint32_t *mab = (uint32_t *)malloc((size_t)(O + ckk) * sizeof(uint32_t));
        int32_t *e = (int32_t *)malloc((size_t)(O + ckk) * sizeof(int32_t));
        int rc = mab && e ? bwd_maxbits(dy, xp, N, C, H, W, O, k, mab, mab + O) : -1;
        if (!rc) {
            for (i64 i = 0; i < O + ckk; i++) e[i] = mm_exp_of_absbits(mab[i]);
            rc = bwd_weights(dy, xp, N, C, H, W, O, k, e, e + O, t_dw, p_db, dw, db, NULL, NULL, nth);
        }
        free(mab); free(e);
        if (rc) return rc;
    }
    if (!dx) return 0;
    /* dcols[n].t() = W2.t() @ dy[n] ([C*k*k, H*W], the layout the fold reads contiguously). */
    mmc2i c2 = {dx, C, H, W, k};
    mmspec s;
    memset(&s, 0, sizeof(s));
    s.A = w; s.sab = 0; s.sam = 1; s.sak = ckk;
    s.B = dy; s.sbb = O * hw; s.sbk = hw; s.sbn = 1;
    s.c2i = &c2;
    s.nb = N; s.M = ckk; s.K = O; s.N = hw; s.t = t_dx; s.nth = nth;
    return exact_mm_run(&s);
}

/* Row-sharded weight gradient, step 1: this worker's max |x| of every group of dw (amax_a [O],
 * also db's groups) and of cols' columns (amax_b [C*k*k]), as floats. */
int conv2d_bwd_maxabs(const float *dy, const float *xp, float *amax_a, float *amax_b, i64 N, i64 C, i64 H, i64 W,
                      i64 O, i64 k) {
    i64 ckk = C * k * k;
    uint32_t *mab = (uint32_t *)malloc((size_t)(O + ckk) * sizeof(uint32_t));
    if (!mab || bwd_maxbits(dy, xp, N, C, H, W, O, k, mab, mab + O)) { free(mab); return -1; }
    memcpy(amax_a, mab, (size_t)O * sizeof(float));
    memcpy(amax_b, mab + O, (size_t)ckk * sizeof(float));
    free(mab);
    return 0;
}

/* Step 2, from the exponents all workers agreed on (ea [O], eb [C*k*k]) and the whole batch's
 * t_dw and p_db: this worker's exact integer sums of dw ([O, C*k*k]) and db ([O]) as doubles. */
int conv2d_bwd_sums(const float *dy, const float *xp, const int32_t *ea, const int32_t *eb, double *dw_sum,
                    double *db_sum, i64 N, i64 C, i64 H, i64 W, i64 O, i64 k, int t_dw, int p_db, int nth) {
    return bwd_weights(dy, xp, N, C, H, W, O, k, ea, eb, t_dw, p_db, NULL, NULL, dw_sum, db_sum, nth);
}
