/* Fast CPU kernels for gpu_ops: each one performs exactly the float32/float64 operations of
 * the reference (gpu_ops/ref.py, gpu_ops/functional.py, gpu_ops/optim.py) in the same order,
 * so the results are bit-identical to the reference.
 *
 * Build flags (gpu_ops/cpu/build.py): -O3 -fno-fast-math -ffp-contract=off
 * -fno-unsafe-math-optimizations -fno-trapping-math -fno-math-errno [-march=native].
 * Why these cannot change a bit:
 *  - every result-defining operation here is an IEEE-754 basic operation (+ - * /, double
 *    sqrt, float<->double/int conversions, floor/trunc, compares/selects, integer ops); each is
 *    correctly rounded in its scalar, SSE, AVX2, AVX-512 and NEON forms alike;
 *  - -ffp-contract=off forbids fusing a*b+c into an FMA although the ISA has one;
 *  - without -ffast-math (-fassociative-math) gcc may not reassociate float additions, so it
 *    vectorises only across independent outputs (or across the independent accumulators we
 *    wrote ourselves); the order of every float operation on every output stays as written;
 *  - no -ffinite-math-only / -fno-signed-zeros, and no crtfastmath (no FTZ/DAZ), so signed
 *    zeros, subnormals, inf and NaN follow IEEE semantics;
 *  - -fno-trapping-math only lets gcc ignore FP exception flags/traps (needed so it will
 *    vectorise floor/trunc); it enables no reassociation, contraction or finite-math
 *    assumption, and no kernel reads the exception flags, so values are unchanged;
 *  - -fno-math-errno only stops gcc from calling libm after an inlined sqrt instruction just to
 *    set errno (for negative inputs); the result is still the correctly rounded IEEE sqrt (NaN
 *    for negative inputs), and it lets gcc vectorise AdamW's sqrt (sqrtpd) over the elements.
 * The only sums that are reordered at all are the exact sums: their terms are integer-valued
 * doubles whose every partial sum is an integer below 2^53, so any order gives the same value.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

int pol_kernels_abi(void) { return 1; }

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline double pow2d(int k) { uint64_t u = (uint64_t)(k + 1023) << 52; double d; memcpy(&d, &u, 8); return d; }
static inline float pow2f(int32_t k) { return u2f((uint32_t)(k + 127) << 23); }

/* frexp exponent of the largest |x| given its bits; torch.frexp gives 0 for 0, inf and NaN. */
static inline int exp_of_absbits(uint32_t mb) {
    int e = 0;
    if (mb == 0 || mb >= 0x7f800000u) return 0;
    (void)frexpf(u2f(mb), &e);
    return e;
}

static inline uint32_t absmax_bits(const float *x, i64 n) {
    uint32_t mb = 0;
    for (i64 i = 0; i < n; i++) { uint32_t b = f2u(x[i]) & 0x7fffffffu; mb = b > mb ? b : mb; }
    return mb;
}

/* Accumulators start at +0.0, so an exact zero sum is +0 as ref.exact_sum's "+ 0.0" demands. */
/* ref.exact_sum of one contiguous group of n floats (p = ref.grid_bits(n)). */
static float row_exact_sum(const float *x, i64 n, int p) {
    int e = exp_of_absbits(absmax_bits(x, n));
    double sc = pow2d(p - e);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    i64 i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += trunc((double)x[i] * sc);
        s1 += trunc((double)x[i + 1] * sc);
        s2 += trunc((double)x[i + 2] * sc);
        s3 += trunc((double)x[i + 3] * sc);
    }
    for (; i < n; i++) s0 += trunc((double)x[i] * sc);
    double s = (s0 + s1) + (s2 + s3);
    return (float)(s * pow2d(e - p));
}

/* ref.exact_sum over the middle axis of a contiguous [n, c] block, one group per column. */
static void col_exact_sum(const float *x, float *out, i64 n, i64 c, int p, uint32_t *mb, double *acc) {
    for (i64 j = 0; j < c; j++) { mb[j] = 0; acc[j] = 0.0; }
    for (i64 i = 0; i < n; i++) {
        const float *r = x + i * c;
        for (i64 j = 0; j < c; j++) { uint32_t b = f2u(r[j]) & 0x7fffffffu; mb[j] = b > mb[j] ? b : mb[j]; }
    }
    /* reuse mb as the exponent store */
    for (i64 j = 0; j < c; j++) mb[j] = (uint32_t)exp_of_absbits(mb[j]);
    double *sc = (double *)malloc((size_t)c * sizeof(double));
    for (i64 j = 0; j < c; j++) sc[j] = pow2d(p - (int)mb[j]);
    for (i64 i = 0; i < n; i++) {
        const float *r = x + i * c;
        for (i64 j = 0; j < c; j++) acc[j] += trunc((double)r[j] * sc[j]);
    }
    for (i64 j = 0; j < c; j++) out[j] = (float)(acc[j] * pow2d((int)mb[j] - p));
    free(sc);
}

/* exact_sum of x viewed as [outer, n, inner] over the middle axis -> out [outer, inner]. */
void exact_sum_axis(const float *x, float *out, i64 outer, i64 n, i64 inner, int p) {
    if (inner == 1) {
        for (i64 o = 0; o < outer; o++) out[o] = row_exact_sum(x + o * n, n, p);
        return;
    }
    uint32_t *mb = (uint32_t *)malloc((size_t)inner * sizeof(uint32_t));
    double *acc = (double *)malloc((size_t)inner * sizeof(double));
    for (i64 o = 0; o < outer; o++) col_exact_sum(x + o * n * inner, out + o * inner, n, inner, p, mb, acc);
    free(mb);
    free(acc);
}

/* The exact-slice matmul (ref.matmul) is gemm.c's exact_mm. */

/* ---- elementwise polynomials (ref.exp / ref.log / ref.tanh) -------------------------------- */

#define EXP_HI 0x1.62e43p+6f
#define EXP_LO -0x1.9fe36ap+6f

static inline float det_expf(float x) {
    float xc = x < EXP_LO ? EXP_LO : x;
    xc = xc > EXP_HI ? EXP_HI : xc;
    xc = x != x ? 0.0f : xc; /* NaN: result replaced below; keeps the int conversion defined */
    float n = floorf(xc * 0x1.715476p+0f + 0.5f);
    float r = xc - n * 0x1.63p-1f;
    r = r - n * -0x1.bd0106p-13f;
    float p = 0x1.a0d2cep-13f;
    p = p * r + 0x1.6e879cp-10f;
    p = p * r + 0x1.111210p-7f;
    p = p * r + 0x1.555382p-5f;
    p = p * r + 0x1.555554p-3f;
    p = p * r + 0x1.0p-1f;
    float r2 = r * r;
    float y = p * r2 + r + 1.0f;
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1; /* floor division by 2 (arithmetic shift) */
    y = y * pow2f(n1) * pow2f(ni - n1);
    y = x > EXP_HI ? u2f(0x7f800000u) : y;
    y = x < EXP_LO ? 0.0f : y;
    return x != x ? x : y;
}

static inline float det_logf(float x) {
    int tiny = x < 0x1.0p-126f;
    float xs = tiny ? x * 0x1.0p+23f : x;
    uint32_t bits = f2u(xs);
    int32_t e = (int32_t)((bits >> 23) & 0xFFu) - 126;
    float m = u2f((bits & 0x007FFFFFu) | (126u << 23));
    e = tiny ? e - 23 : e;
    int small = m < 0x1.6a09e6p-1f;
    e = small ? e - 1 : e;
    m = small ? m + m : m;
    float z = m - 1.0f;
    float z2 = z * z;
    float p = 0x1.204376p-4f;
    p = p * z + -0x1.d7a370p-4f;
    p = p * z + 0x1.de4a34p-4f;
    p = p * z + -0x1.fcba9ep-4f;
    p = p * z + 0x1.23d37ep-3f;
    p = p * z + -0x1.555ca0p-3f;
    p = p * z + 0x1.999d58p-3f;
    p = p * z + -0x1.fffff8p-3f;
    p = p * z + 0x1.555554p-2f;
    float y = p * z * z2;
    float fe = (float)e;
    y = y + fe * -0x1.bd0106p-13f;
    y = y - 0.5f * z2;
    y = z + y;
    y = y + fe * 0x1.63p-1f;
    y = x == 0.0f ? u2f(0xff800000u) : y;
    y = x < 0.0f ? u2f(0x7fc00000u) : y;
    y = (x == u2f(0x7f800000u)) ? x : y;
    return x != x ? x : y;
}

static inline float det_tanhf(float x) { return 1.0f - 2.0f / (det_expf(x + x) + 1.0f); }

void pol1_exp_f32(const float *x, float *y, i64 n) { for (i64 i = 0; i < n; i++) y[i] = det_expf(x[i]); }
void pol1_log_f32(const float *x, float *y, i64 n) { for (i64 i = 0; i < n; i++) y[i] = det_logf(x[i]); }
void pol1_tanh_f32(const float *x, float *y, i64 n) { for (i64 i = 0; i < n; i++) y[i] = det_tanhf(x[i]); }

void pol1_tanh_bwd(const float *dy, const float *y, float *dx, i64 n) {
    for (i64 i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

#define GELU_K 0x1.988454p-1f
#define GELU_C 0x1.6e4e26p-5f
#define GELU_C3 0x1.12ba9ep-3f

void pol1_gelu_fwd(const float *x, float *y, float *th, i64 n) {
    for (i64 i = 0; i < n; i++) {
        float v = x[i];
        float x3 = v * v * v;
        float u = GELU_K * (v + GELU_C * x3);
        float t = det_tanhf(u);
        th[i] = t;
        y[i] = (0.5f * v) * (1.0f + t);
    }
}

void pol1_gelu_bwd(const float *dy, const float *x, const float *th, float *dx, i64 n) {
    for (i64 i = 0; i < n; i++) {
        float v = x[i], t = th[i];
        float du = GELU_K * (1.0f + GELU_C3 * (v * v));
        float d = 0.5f * (1.0f + t) + (0.5f * v) * (1.0f - t * t) * du;
        dx[i] = dy[i] * d;
    }
}

/* ---- row ops: softmax, log-softmax, cross-entropy, layer norm ------------------------------ */

/* y = e / exact_sum(e), e = exp(x - mx[r]) */
void pol1_softmax_fwd(const float *x, const float *mx, float *y, i64 R, i64 N, int p) {
    for (i64 r = 0; r < R; r++) {
        const float *xr = x + r * N;
        float *yr = y + r * N;
        float m = mx[r];
        for (i64 j = 0; j < N; j++) yr[j] = det_expf(xr[j] - m);
        float s = row_exact_sum(yr, N, p);
        for (i64 j = 0; j < N; j++) yr[j] = yr[j] / s;
    }
}

/* dx = y * (dy - exact_sum(dy * y)) */
void pol1_softmax_bwd(const float *y, const float *dy, float *dx, i64 R, i64 N, int p) {
    for (i64 r = 0; r < R; r++) {
        const float *yr = y + r * N, *dr = dy + r * N;
        float *xr = dx + r * N;
        for (i64 j = 0; j < N; j++) xr[j] = dr[j] * yr[j];
        float s = row_exact_sum(xr, N, p);
        for (i64 j = 0; j < N; j++) xr[j] = yr[j] * (dr[j] - s);
    }
}

/* logp = z - log(s), prob = e / s with z = x - mx, e = exp(z), s = exact_sum(e).
 * logp may be NULL; then lp_at[r] = logp[r, target[r]] is written (cross-entropy). */
void pol1_log_softmax_fwd(const float *x, const float *mx, float *logp, float *prob, const int64_t *target,
                     float *lp_at, i64 R, i64 N, int p) {
    for (i64 r = 0; r < R; r++) {
        const float *xr = x + r * N;
        float *pr = prob + r * N;
        float m = mx[r];
        for (i64 j = 0; j < N; j++) pr[j] = det_expf(xr[j] - m);
        float s = row_exact_sum(pr, N, p);
        float ls = det_logf(s);
        if (logp) {
            float *lr = logp + r * N;
            for (i64 j = 0; j < N; j++) lr[j] = (xr[j] - m) - ls;
        }
        if (target) lp_at[r] = (xr[target[r]] - m) - ls;
        for (i64 j = 0; j < N; j++) pr[j] = pr[j] / s;
    }
}

/* dx = dy - p * exact_sum(dy) */
void pol1_log_softmax_bwd(const float *prob, const float *dy, float *dx, i64 R, i64 N, int p) {
    for (i64 r = 0; r < R; r++) {
        const float *pr = prob + r * N, *dr = dy + r * N;
        float *xr = dx + r * N;
        float s = row_exact_sum(dr, N, p);
        for (i64 j = 0; j < N; j++) xr[j] = dr[j] - pr[j] * s;
    }
}

/* g = ((p - onehot) / nrows) * dloss */
void pol1_cross_entropy_bwd(const float *prob, const int64_t *target, float dloss, float nrows, float *dx, i64 R,
                       i64 N) {
    for (i64 r = 0; r < R; r++) {
        const float *pr = prob + r * N;
        float *xr = dx + r * N;
        i64 t = target[r];
        for (i64 j = 0; j < N; j++) xr[j] = ((pr[j] - (j == t ? 1.0f : 0.0f)) / nrows) * dloss;
    }
}

void pol1_layer_norm_fwd(const float *x, const float *g, const float *b, float *y, float *xhat, float *rstd, i64 R,
                    i64 N, int p, float eps, float nf) {
    float *sq = (float *)malloc((size_t)N * sizeof(float));
    for (i64 r = 0; r < R; r++) {
        const float *xr = x + r * N;
        float *hr = xhat + r * N, *yr = y + r * N;
        float mean = row_exact_sum(xr, N, p) / nf;
        for (i64 j = 0; j < N; j++) { float c = xr[j] - mean; hr[j] = c; sq[j] = c * c; }
        float var = row_exact_sum(sq, N, p) / nf;
        float rs = 1.0f / (float)sqrt((double)(var + eps));
        rstd[r] = rs;
        for (i64 j = 0; j < N; j++) { float h = hr[j] * rs; hr[j] = h; yr[j] = h * g[j] + b[j]; }
    }
    free(sq);
}

void layer_norm_bwd(const float *dy, const float *xhat, const float *rstd, const float *g, float *dx, float *dg,
                    float *db, i64 R, i64 N, int p_row, int p_col, float nf) {
    float *prod = (float *)malloc((size_t)(R * N) * sizeof(float));
    float *dxh = (float *)malloc((size_t)N * sizeof(float));
    float *tmp = (float *)malloc((size_t)N * sizeof(float));
    for (i64 r = 0; r < R; r++) {
        const float *dr = dy + r * N, *hr = xhat + r * N;
        float *pr = prod + r * N, *xr = dx + r * N;
        for (i64 j = 0; j < N; j++) pr[j] = dr[j] * hr[j];
        for (i64 j = 0; j < N; j++) dxh[j] = dr[j] * g[j];
        float a = row_exact_sum(dxh, N, p_row) / nf;
        for (i64 j = 0; j < N; j++) tmp[j] = dxh[j] * hr[j];
        float c = row_exact_sum(tmp, N, p_row) / nf;
        float rs = rstd[r];
        for (i64 j = 0; j < N; j++) xr[j] = ((dxh[j] - a) - hr[j] * c) * rs;
    }
    free(dxh);
    free(tmp);
    exact_sum_axis(prod, dg, 1, R, N, p_col);
    exact_sum_axis(dy, db, 1, R, N, p_col);
    free(prod);
}

/* ---- optimizers (gpu_ops/optim.py) ---------------------------------------------------------- */

void pol1_sgd_step(float *p, const float *g, float *buf, i64 n, float lr, float mom, float wd, int has_wd) {
    for (i64 i = 0; i < n; i++) {
        float gi = g[i];
        if (has_wd) gi = gi + wd * p[i];
        if (buf) { float bi = mom * buf[i] + gi; buf[i] = bi; gi = bi; }
        p[i] = p[i] - lr * gi;
    }
}

void pol1_adamw_step(float *p, const float *g, float *m, float *v, i64 n, float lrwd, int has_wd, float b1, float omb1,
                float b2, float omb2, float step_size, float sqbc2, float eps) {
    for (i64 i = 0; i < n; i++) {
        float pi = p[i], gi = g[i];
        if (has_wd) pi = pi - lrwd * pi;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        float denom = (float)sqrt((double)vi) / sqbc2 + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}
