/* Layer helpers for gpu_ops/functional.py and gpu_ops/nn.py: Philox dropout masks, col2im for a
 * convolution backward whose forward ran on the reference (conv.c does the fast path), ReLU.
 * Same build flags and argument as kernels.c: gathers and integer ops are exact; the only float
 * operations are the float32 adds of col2im, done one at a time per element in the reference's
 * order (kernel offsets in row-major order, starting from +0), and ReLU's compare/select.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;

/* One Philox4x32-10 block: counter (c0, c1, c2, c3), key (k0, k1) (protocol.rng.compute_philox4x32). */
static inline void philox_block(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                                uint32_t *w) {
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    w[0] = c0; w[1] = c1; w[2] = c2; w[3] = c3;
}

/* protocol.rng.compute_random_u32(seed, stream, a, b, n): block i has counter (i, a, b, stream)
 * (i as uint32, wrapping like numpy's uint32 arange) under key (seed lo, seed hi). */
void philox_u32(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, i64 n, uint32_t *out) {
    uint32_t w[4];
    for (i64 i = 0; 4 * i < n; i++) {
        philox_block((uint32_t)i, a, b, stream, (uint32_t)seed, (uint32_t)(seed >> 32), w);
        i64 m = n - 4 * i < 4 ? n - 4 * i : 4;
        memcpy(out + 4 * i, w, (size_t)m * sizeof(uint32_t));
    }
}

/* functional.dropout_mask over those words: mask[i] = scale if word[i] >= threshold else +0. */
void dropout_mask(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, i64 n, uint64_t threshold, float scale,
                  float *mask) {
    uint32_t w[4];
    for (i64 i = 0; 4 * i < n; i++) {
        philox_block((uint32_t)i, a, b, stream, (uint32_t)seed, (uint32_t)(seed >> 32), w);
        for (i64 j = 0; j < 4 && 4 * i + j < n; j++) mask[4 * i + j] = (uint64_t)w[j] >= threshold ? scale : 0.0f;
    }
}

/* dx[n, c] = crop(sum over (di, dj) in row-major order of the shifted patch gradients), each
 * element accumulated one float32 add at a time from +0, like functional._Conv2d.backward.
 * dcols [N, H, W, C, k, k]; pbuf is scratch of (H + 2 pad) * (W + 2 pad) floats. */
void col2im(const float *dcols, float *dx, float *pbuf, i64 N, i64 C, i64 H, i64 W, i64 k) {
    i64 pad = k / 2, hp = H + 2 * pad, wp = W + 2 * pad, ckk = C * k * k;
    for (i64 n = 0; n < N; n++)
        for (i64 c = 0; c < C; c++) {
            for (i64 q = 0; q < hp * wp; q++) pbuf[q] = 0.0f;
            for (i64 di = 0; di < k; di++)
                for (i64 dj = 0; dj < k; dj++) {
                    const float *src = dcols + n * H * W * ckk + c * k * k + di * k + dj;
                    for (i64 i = 0; i < H; i++) {
                        float *dst = pbuf + (i + di) * wp + dj;
                        const float *s = src + i * W * ckk;
                        for (i64 j = 0; j < W; j++) dst[j] = dst[j] + s[j * ckk];
                    }
                }
            float *out = dx + (n * C + c) * H * W;
            for (i64 i = 0; i < H; i++) memcpy(out + i * W, pbuf + (i + pad) * wp + pad, (size_t)W * sizeof(float));
        }
}

/* ReLU as functional._ReLU: y = x if x > 0 else +0; backward dx = dy if y > 0 else +0. */
void pol1_relu_fwd(const float *x, float *y, i64 n) {
    for (i64 i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void pol1_relu_bwd(const float *dy, const float *y, float *dx, i64 n) {
    for (i64 i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* functional._ScaleMask on [nb, T, T]: y = x * scale where j <= i; above the diagonal -inf
 * (forward) or +0 (backward, the gradient). */
void scale_mask(const float *x, float *y, i64 nb, i64 T, float scale, int bwd) {
    const float fill = bwd ? 0.0f : -INFINITY;
    for (i64 b = 0; b < nb; b++)
        for (i64 i = 0; i < T; i++) {
            const float *xr = x + (b * T + i) * T;
            float *yr = y + (b * T + i) * T;
            for (i64 j = 0; j < T; j++) yr[j] = j > i ? fill : xr[j] * scale;
        }
}
