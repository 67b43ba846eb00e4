/* Fused exact-slice matmul (ref.matmul, SPEC.md §10.3) in one pass: slice, integer GEMM, unscale.
 *
 * Same build flags and argument as kernels.c. The GEMM here multiplies and adds integer-valued
 * doubles: |a_int|, |b_int| < 2^t with k * 2^(2t) <= 2^53 (ref.slice_bits), so every product
 * and every partial sum (in any order, any blocking) is an integer of magnitude < 2^53,
 * representable exactly; a multiply, an add or a fused multiply-add of them rounds nothing.
 * The explicit FMA intrinsics below are therefore value-identical to torch.mm's DGEMM (MKL,
 * any ISA, any blocking) and to the portable fallback loop. Slicing (trunc(x * 2^(t-e)) with
 * e the frexp exponent of the line's max |x|) and unscaling (f32((s + 0) * 2^(ea-t) * 2^(eb-t))
 * then + bias in float32) are the very operations of ref.matmul / mm_slice / mm_unscale.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define POL_GEMM_AVX2 1
#endif

typedef int64_t i64;

#define MR 6
#define NR 8

static inline uint32_t g_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float g_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline double g_pow2d(int k) { uint64_t u = (uint64_t)(k + 1023) << 52; double d; memcpy(&d, &u, 8); return d; }

/* frexp exponent of the largest |x| from its bits; 0 for 0, inf and NaN (like torch.frexp). */
static inline int g_exp_of_absbits(uint32_t mb) {
    int e = 0;
    if (mb == 0 || mb >= 0x7f800000u) return 0;
    (void)frexpf(g_u2f(mb), &e);
    return e;
}

/* Exponents of the R lines of length L of x (element strides sr between lines, sl along one). */
static void line_exps(const float *x, i64 R, i64 L, i64 sr, i64 sl, int32_t *e, uint32_t *tmp) {
    if (sl == 1 || sr != 1) {
        for (i64 r = 0; r < R; r++) {
            const float *xr = x + r * sr;
            uint32_t mb = 0;
            if (sl == 1) {
                for (i64 l = 0; l < L; l++) { uint32_t v = g_f2u(xr[l]) & 0x7fffffffu; mb = v > mb ? v : mb; }
            } else {
                for (i64 l = 0; l < L; l++) { uint32_t v = g_f2u(xr[l * sl]) & 0x7fffffffu; mb = v > mb ? v : mb; }
            }
            e[r] = g_exp_of_absbits(mb);
        }
        return;
    }
    for (i64 r = 0; r < R; r++) tmp[r] = 0;
    for (i64 l = 0; l < L; l++) {
        const float *xl = x + l * sl;
        for (i64 r = 0; r < R; r++) { uint32_t v = g_f2u(xl[r]) & 0x7fffffffu; tmp[r] = v > tmp[r] ? v : tmp[r]; }
    }
    for (i64 r = 0; r < R; r++) e[r] = g_exp_of_absbits(tmp[r]);
}

/* Pack `w` (<= W) lines starting at x (line stride sr, element stride sl, length L) as integer
 * slices into p[l * W + i] (zero for i >= w). */
static void pack_lines(const float *x, i64 w, i64 W, i64 L, i64 sr, i64 sl, const double *sc, double *p) {
    if (sr == 1 && w == W) {
        for (i64 l = 0; l < L; l++) {
            const float *xl = x + l * sl;
            double *pl = p + l * W;
            for (i64 i = 0; i < W; i++) pl[i] = trunc((double)xl[i] * sc[i]);
        }
        return;
    }
    for (i64 i = 0; i < w; i++) {
        const float *xi = x + i * sr;
        double s = sc[i];
        for (i64 l = 0; l < L; l++) p[l * W + i] = trunc((double)xi[l * sl] * s);
    }
    for (i64 i = w; i < W; i++)
        for (i64 l = 0; l < L; l++) p[l * W + i] = 0.0;
}

/* ct[MR][NR] = sum_k ap[k][:] (outer) bp[k][:]; accumulators start at +0. */
static void ukernel(i64 K, const double *ap, const double *bp, double *ct) {
#ifdef POL_GEMM_AVX2
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd(), c10 = _mm256_setzero_pd(),
            c11 = _mm256_setzero_pd(), c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd(),
            c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd(), c40 = _mm256_setzero_pd(),
            c41 = _mm256_setzero_pd(), c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
    for (i64 k = 0; k < K; k++) {
        __m256d b0 = _mm256_loadu_pd(bp + k * NR), b1 = _mm256_loadu_pd(bp + k * NR + 4);
        const double *a = ap + k * MR;
        __m256d a0 = _mm256_broadcast_sd(a), a1 = _mm256_broadcast_sd(a + 1), a2 = _mm256_broadcast_sd(a + 2);
        c00 = _mm256_fmadd_pd(a0, b0, c00); c01 = _mm256_fmadd_pd(a0, b1, c01);
        c10 = _mm256_fmadd_pd(a1, b0, c10); c11 = _mm256_fmadd_pd(a1, b1, c11);
        c20 = _mm256_fmadd_pd(a2, b0, c20); c21 = _mm256_fmadd_pd(a2, b1, c21);
        __m256d a3 = _mm256_broadcast_sd(a + 3), a4 = _mm256_broadcast_sd(a + 4), a5 = _mm256_broadcast_sd(a + 5);
        c30 = _mm256_fmadd_pd(a3, b0, c30); c31 = _mm256_fmadd_pd(a3, b1, c31);
        c40 = _mm256_fmadd_pd(a4, b0, c40); c41 = _mm256_fmadd_pd(a4, b1, c41);
        c50 = _mm256_fmadd_pd(a5, b0, c50); c51 = _mm256_fmadd_pd(a5, b1, c51);
    }
    _mm256_storeu_pd(ct + 0, c00); _mm256_storeu_pd(ct + 4, c01);
    _mm256_storeu_pd(ct + 8, c10); _mm256_storeu_pd(ct + 12, c11);
    _mm256_storeu_pd(ct + 16, c20); _mm256_storeu_pd(ct + 20, c21);
    _mm256_storeu_pd(ct + 24, c30); _mm256_storeu_pd(ct + 28, c31);
    _mm256_storeu_pd(ct + 32, c40); _mm256_storeu_pd(ct + 36, c41);
    _mm256_storeu_pd(ct + 40, c50); _mm256_storeu_pd(ct + 44, c51);
#else
    double acc[MR * NR];
    for (int i = 0; i < MR * NR; i++) acc[i] = 0.0;
    for (i64 k = 0; k < K; k++)
        for (int i = 0; i < MR; i++) {
            double a = ap[k * MR + i];
            for (int j = 0; j < NR; j++) acc[i * NR + j] += a * bp[k * NR + j];
        }
    memcpy(ct, acc, sizeof(acc));
#endif
}

/* C[b] = ref.matmul(A[b], B[b]) (+ bias) for b < nb. A[b][m][k] is A + b*sab + m*sam + k*sak,
 * B[b][k][n] is B + b*sbb + k*sbk + n*sbn; C is contiguous [nb, M, N], or [nb, N, M] (the result
 * transposed) when tc != 0; bias (or NULL) is [N]. */
void exact_mm(const float *A, i64 sab, i64 sam, i64 sak, const float *B, i64 sbb, i64 sbk, i64 sbn, float *C,
              const float *bias, i64 nb, i64 M, i64 K, i64 N, int t, int tc) {
    i64 npan = (N + NR - 1) / NR;
    i64 mx = M > N ? M : N;
    int32_t *ea = (int32_t *)malloc((size_t)M * sizeof(int32_t));
    int32_t *eb = (int32_t *)malloc((size_t)N * sizeof(int32_t));
    uint32_t *tmp = (uint32_t *)malloc((size_t)mx * sizeof(uint32_t));
    double *sa = (double *)malloc((size_t)(M + MR) * sizeof(double));
    double *fa = (double *)malloc((size_t)(M + MR) * sizeof(double));
    double *sb = (double *)malloc((size_t)(npan * NR) * sizeof(double));
    double *fb = (double *)malloc((size_t)(npan * NR) * sizeof(double));
    double *bp = (double *)malloc((size_t)(npan * NR * K) * sizeof(double));
    double *ap = (double *)malloc((size_t)(MR * K) * sizeof(double));
    double ct[MR * NR];
    for (i64 b = 0; b < nb; b++) {
        const float *Ab = A + b * sab, *Bb = B + b * sbb;
        float *Cb = C + b * M * N;
        line_exps(Ab, M, K, sam, sak, ea, tmp);
        for (i64 m = 0; m < M; m++) { sa[m] = g_pow2d(t - ea[m]); fa[m] = g_pow2d(ea[m] - t); }
        if (b == 0 || sbb != 0) { /* a broadcast B (batch stride 0, e.g. conv weights) is packed once */
            line_exps(Bb, N, K, sbn, sbk, eb, tmp);
            for (i64 n = 0; n < N; n++) { sb[n] = g_pow2d(t - eb[n]); fb[n] = g_pow2d(eb[n] - t); }
            for (i64 n = N; n < npan * NR; n++) { sb[n] = 0.0; fb[n] = 0.0; }
            for (i64 j = 0; j < npan; j++) {
                i64 w = N - j * NR < NR ? N - j * NR : NR;
                pack_lines(Bb + j * NR * sbn, w, NR, K, sbn, sbk, sb + j * NR, bp + j * NR * K);
            }
        }
        for (i64 i0 = 0; i0 < M; i0 += MR) {
            i64 h = M - i0 < MR ? M - i0 : MR;
            pack_lines(Ab + i0 * sam, h, MR, K, sam, sak, sa + i0, ap);
            for (i64 j = 0; j < npan; j++) {
                i64 n0 = j * NR;
                i64 w = N - n0 < NR ? N - n0 : NR;
                ukernel(K, ap, bp + j * NR * K, ct);
                if (tc) {
                    for (i64 i = 0; i < h; i++) {
                        const double *s = ct + i * NR;
                        double f = fa[i0 + i];
                        for (i64 q = 0; q < w; q++) {
                            float v = (float)((s[q] + 0.0) * f * fb[n0 + q]);
                            Cb[(n0 + q) * M + i0 + i] = bias ? v + bias[n0 + q] : v;
                        }
                    }
                    continue;
                }
#ifdef POL_GEMM_AVX2
                if (w == NR) { /* same operations as the loop below, 4 lanes at a time */
                    __m256d z = _mm256_setzero_pd(), g0 = _mm256_loadu_pd(fb + n0), g1 = _mm256_loadu_pd(fb + n0 + 4);
                    for (i64 i = 0; i < h; i++) {
                        float *cr = Cb + (i0 + i) * N + n0;
                        __m256d f = _mm256_set1_pd(fa[i0 + i]);
                        __m256d s0 = _mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(_mm256_loadu_pd(ct + i * NR), z), f), g0);
                        __m256d s1 = _mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(_mm256_loadu_pd(ct + i * NR + 4), z), f), g1);
                        __m128 v0 = _mm256_cvtpd_ps(s0), v1 = _mm256_cvtpd_ps(s1);
                        if (bias) {
                            v0 = _mm_add_ps(v0, _mm_loadu_ps(bias + n0));
                            v1 = _mm_add_ps(v1, _mm_loadu_ps(bias + n0 + 4));
                        }
                        _mm_storeu_ps(cr, v0);
                        _mm_storeu_ps(cr + 4, v1);
                    }
                    continue;
                }
#endif
                for (i64 i = 0; i < h; i++) {
                    float *cr = Cb + (i0 + i) * N + n0;
                    const double *s = ct + i * NR;
                    double f = fa[i0 + i];
                    if (bias) {
                        for (i64 q = 0; q < w; q++) cr[q] = (float)((s[q] + 0.0) * f * fb[n0 + q]) + bias[n0 + q];
                    } else {
                        for (i64 q = 0; q < w; q++) cr[q] = (float)((s[q] + 0.0) * f * fb[n0 + q]);
                    }
                }
            }
        }
    }
    free(ea); free(eb); free(tmp); free(sa); free(fa); free(sb); free(fb); free(bp); free(ap);
}
