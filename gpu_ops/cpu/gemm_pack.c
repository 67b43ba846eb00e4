/* The exact matmul's inner parts (gemm.c): line exponents, slicing into packed micro-panels and
 * the MR x NR micro-kernel. Same build flags and exactness argument as gemm.c (see its top):
 * every packed value is trunc(x * 2^(t-e)) computed as in ref.matmul, and the micro-kernel
 * only multiplies and adds integer-valued doubles whose sums stay below 2^53.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define POL_GEMM_AVX2 1
#endif

#include "gemm.h"

#define MR MM_MR
#define NR MM_NR

static inline uint32_t g_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

#define g_exp_of_absbits mm_exp_of_absbits

/* Exponents of the R lines of length L of x (element strides sr between lines, sl along one). */
void mm_line_exps(const float *x, i64 R, i64 L, i64 sr, i64 sl, int32_t *e, uint32_t *tmp) {
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

#ifdef POL_GEMM_AVX2
static void pack_rows_tr(const float *x, i64 W, i64 L, i64 sr, const double *sc, double *p);
#endif

/* Pack `w` (<= W) lines starting at x (line stride sr, element stride sl, length L) as integer
 * slices into p[l * W + i] (zero for i >= w). */
void mm_pack_lines(const float *x, i64 w, i64 W, i64 L, i64 sr, i64 sl, const double *sc, double *p) {
#ifdef POL_GEMM_AVX2
    if (sl == 1 && sr != 1 && w == W && (W == MR || W == NR)) { /* rows along K: a row-major A */
        pack_rows_tr(x, W, L, sr, sc, p);
        return;
    }
#endif
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

#ifdef POL_GEMM_AVX2
/* io[0..7] are consecutive offsets: along K, 8 elements of each line are one contiguous load. */
static inline int k_run8(const i64 *io) {
    i64 b = io[0];
    return io[1] == b + 1 && io[2] == b + 2 && io[3] == b + 3 && io[4] == b + 4 && io[5] == b + 5 &&
           io[6] == b + 6 && io[7] == b + 7;
}

/* v[q][i] <- v[i][q]: 8 rows of 8 floats transposed in registers (moves only, no arithmetic). */
static inline void tr8(__m256 *v) {
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
    __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = _mm256_permute2f128_ps(u0, u4, 0x20); v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    v[2] = _mm256_permute2f128_ps(u2, u6, 0x20); v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    v[4] = _mm256_permute2f128_ps(u0, u4, 0x31); v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    v[6] = _mm256_permute2f128_ps(u2, u6, 0x31); v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* One packed line of 8 (put_nr) or 6 (put_mr) lanes from 8 float lanes: each lane converted to
 * double, multiplied by its scale and truncated, the scalar path's operations 4 lanes at a time. */
static inline void put_nr(double *dst, __m256 v, __m256d s0, __m256d s1) {
    __m256d d0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), s0);
    __m256d d1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), s1);
    _mm256_storeu_pd(dst, _mm256_round_pd(d0, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
    _mm256_storeu_pd(dst + 4, _mm256_round_pd(d1, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
}

static inline void put_mr(double *dst, __m256 v, __m256d s0, __m128d s1) {
    __m256d d0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), s0);
    __m128d d1 = _mm_mul_pd(_mm_cvtps_pd(_mm256_extractf128_ps(v, 1)), s1);
    _mm256_storeu_pd(dst, _mm256_round_pd(d0, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
    _mm_storeu_pd(dst + 4, _mm_round_pd(d1, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
}

/* mm_pack_lines for W = MR or NR full lines, each contiguous along K (stride sr between lines): per
 * 8 indices, 8 contiguous loads per line and a transpose in registers; the conversion, product
 * and truncation are the scalar path's operations, 4 lanes at a time. */
static void pack_rows_tr(const float *x, i64 W, i64 L, i64 sr, const double *sc, double *p) {
    const __m256d s0 = _mm256_loadu_pd(sc);
    const __m256d s1 = W == NR ? _mm256_loadu_pd(sc + 4) : _mm256_castpd128_pd256(_mm_loadu_pd(sc + 4));
    i64 l = 0;
    for (; l + 8 <= L; l += 8) {
        __m256 v[8];
        for (i64 i = 0; i < W; i++) v[i] = _mm256_loadu_ps(x + i * sr + l);
        for (i64 i = W; i < 8; i++) v[i] = _mm256_setzero_ps();
        tr8(v);
        for (int q = 0; q < 8; q++) {
            if (W == NR) put_nr(p + (l + q) * W, v[q], s0, s1);
            else put_mr(p + (l + q) * W, v[q], s0, _mm256_castpd256_pd128(s1));
        }
    }
    for (; l < L; l++)
        for (i64 i = 0; i < W; i++) p[l * W + i] = trunc((double)x[i * sr + l] * sc[i]);
}

/* mm_pack_tab for W = w = MR or NR scattered lines: one 8-lane gather per index, or, where 8
 * consecutive indices are consecutive in memory (a conv weight gradient's K runs along a row of
 * pixels), 8 contiguous loads per line and an 8x8 transpose in registers (the loads only; the
 * conversion, product and truncation are the scalar path's operations, 4 lanes at a time).
 * Returns 0 when the lines' offsets do not fit the gather's 32-bit indices (nothing written). */
static int pack_tab_gather(const float *x, const i64 *lo, const i64 *io, i64 r, i64 W, i64 l0, i64 L,
                           const double *sc, double *p) {
    int32_t off[8];
    i64 b0 = lo[r];
    int contig = 1;
    for (i64 i = 0; i < 8; i++) {
        i64 d = i < W ? lo[r + i] - b0 : 0;
        if (d > INT32_MAX || d < INT32_MIN) return 0;
        off[i] = (int32_t)d;
        contig &= i >= W || d == i;
    }
    const __m256i vi = _mm256_loadu_si256((const __m256i *)off);
    const __m256d s0 = _mm256_loadu_pd(sc);
    const float *xb = x + b0;
    if (contig) { /* consecutive lines (a conv's pixels in one row): plain loads, no gather */
        for (i64 l = 0; l < L; l++) {
            const float *src = xb + io[l0 + l];
            __m256d d0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(src)), s0);
            _mm256_storeu_pd(p + l * W, _mm256_round_pd(d0, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
            if (W == NR) {
                __m256d d1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(src + 4)), _mm256_loadu_pd(sc + 4));
                _mm256_storeu_pd(p + l * W + 4, _mm256_round_pd(d1, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
            } else {
                __m128 t2 = _mm_castsi128_ps(_mm_loadu_si64(src + 4));  /* two floats, unaligned: no double* access */
                __m128d d1 = _mm_mul_pd(_mm_cvtps_pd(t2), _mm_loadu_pd(sc + 4));
                _mm_storeu_pd(p + l * W + 4, _mm_round_pd(d1, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
            }
        }
        return 1;
    }
    const i64 *ik = io + l0;
    if (W == NR) {
        const __m256d s1 = _mm256_loadu_pd(sc + 4);
        for (i64 l = 0; l < L; l++) {
            if (l + 8 <= L && k_run8(ik + l)) { /* 8 consecutive indices: 8 row loads, a transpose */
                __m256 v[8];
                for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(xb + off[i] + ik[l]);
                tr8(v);
                for (int q = 0; q < 8; q++) put_nr(p + (l + q) * NR, v[q], s0, s1);
                l += 7;
                continue;
            }
            put_nr(p + l * NR, _mm256_i32gather_ps(xb + io[l0 + l], vi, 4), s0, s1);
        }
    } else {
        const __m128d s1 = _mm_loadu_pd(sc + 4);
        for (i64 l = 0; l < L; l++) {
            if (l + 8 <= L && k_run8(ik + l)) {
                __m256 v[8];
                for (int i = 0; i < MR; i++) v[i] = _mm256_loadu_ps(xb + off[i] + ik[l]);
                v[6] = v[7] = _mm256_setzero_ps();
                tr8(v);
                for (int q = 0; q < 8; q++) put_mr(p + (l + q) * MR, v[q], s0, s1);
                l += 7;
                continue;
            }
            put_mr(p + l * MR, _mm256_i32gather_ps(xb + io[l0 + l], vi, 4), s0, s1);
        }
    }
    return 1;
}
#endif

/* Like mm_pack_lines for an operand given by offset tables: element (line r, index l) is
 * x[lo[r] + io[l]] (the conv's implicit im2col matrix and its gradients' views, gemm.h). */
void mm_pack_tab(const float *x, const i64 *lo, const i64 *io, i64 r, i64 w, i64 W, i64 l0, i64 L,
                     const double *sc, double *p) {
#ifdef POL_GEMM_AVX2
    if (w == W && (W == MR || W == NR) && pack_tab_gather(x, lo, io, r, W, l0, L, sc, p)) return;
#endif
    int contig = w == W;
    for (i64 i = 1; i < w && contig; i++) contig = lo[r + i] == lo[r] + i;
    if (contig && W == MR) { /* consecutive lines (pixels of one padded row): contiguous loads */
        const float *xr = x + lo[r];
        for (i64 l = 0; l < L; l++) {
            const float *s = xr + io[l0 + l];
            double *pl = p + l * MR;
            for (i64 i = 0; i < MR; i++) pl[i] = trunc((double)s[i] * sc[i]);
        }
        return;
    }
    if (contig && W == NR) {
        const float *xr = x + lo[r];
        for (i64 l = 0; l < L; l++) {
            const float *s = xr + io[l0 + l];
            double *pl = p + l * NR;
            for (i64 i = 0; i < NR; i++) pl[i] = trunc((double)s[i] * sc[i]);
        }
        return;
    }
    if (w == NR && W == NR) { /* eight scattered lines: per index, a gather at fixed offsets */
        i64 o0 = lo[r], o1 = lo[r + 1], o2 = lo[r + 2], o3 = lo[r + 3], o4 = lo[r + 4], o5 = lo[r + 5],
            o6 = lo[r + 6], o7 = lo[r + 7];
        for (i64 l = 0; l < L; l++) {
            const float *s = x + io[l0 + l];
            double *pl = p + l * NR;
            pl[0] = trunc((double)s[o0] * sc[0]); pl[1] = trunc((double)s[o1] * sc[1]);
            pl[2] = trunc((double)s[o2] * sc[2]); pl[3] = trunc((double)s[o3] * sc[3]);
            pl[4] = trunc((double)s[o4] * sc[4]); pl[5] = trunc((double)s[o5] * sc[5]);
            pl[6] = trunc((double)s[o6] * sc[6]); pl[7] = trunc((double)s[o7] * sc[7]);
        }
        return;
    }
    for (i64 i = 0; i < w; i++) {
        const float *xi = x + lo[r + i];
        double s = sc[i];
        for (i64 l = 0; l < L; l++) p[l * W + i] = trunc((double)xi[io[l0 + l]] * s);
    }
    for (i64 i = w; i < W; i++)
        for (i64 l = 0; l < L; l++) p[l * W + i] = 0.0;
}

/* ct[MR][NR] = (load ? ct : +0) + sum_k ap[k][:] (outer) bp[k][:]. Every partial sum is an
 * integer below 2^53 (see the top), so splitting K into blocks changes nothing. */
void mm_ukernel(i64 K, const double *ap, const double *bp, double *ct, int load) {
#if defined(POL_GEMM_AVX2) && defined(__x86_64__) && defined(__GNUC__) && !defined(POL_GEMM_NO_ASM)
    /* The same FMAs as the intrinsics below, register-allocated by hand: gcc keeps only one of
     * the two B vectors in a register and re-loads the other as a memory operand of six FMAs,
     * 13 loads per 12 FMAs, which made the loop load-bound (~10 % slower than MKL's DGEMM
     * kernel at n = 4096). Here: accumulators ymm0-11 (row i: ymm 2i, 2i+1), B in ymm12-13,
     * A broadcasts alternating in ymm14-15; 8 loads per 12 FMAs. */
    if (load)
        for (int i = 0; i < MR * NR; i += 8) _mm_prefetch((const char *)(ct + i), _MM_HINT_T0);
    __asm__ volatile(
        "vxorpd %%ymm0, %%ymm0, %%ymm0\n\tvxorpd %%ymm1, %%ymm1, %%ymm1\n\t"
        "vxorpd %%ymm2, %%ymm2, %%ymm2\n\tvxorpd %%ymm3, %%ymm3, %%ymm3\n\t"
        "vxorpd %%ymm4, %%ymm4, %%ymm4\n\tvxorpd %%ymm5, %%ymm5, %%ymm5\n\t"
        "vxorpd %%ymm6, %%ymm6, %%ymm6\n\tvxorpd %%ymm7, %%ymm7, %%ymm7\n\t"
        "vxorpd %%ymm8, %%ymm8, %%ymm8\n\tvxorpd %%ymm9, %%ymm9, %%ymm9\n\t"
        "vxorpd %%ymm10, %%ymm10, %%ymm10\n\tvxorpd %%ymm11, %%ymm11, %%ymm11\n\t"
        "test %[k], %[k]\n\t"
        "jle 2f\n"
        "1:\n\t"
        "vmovupd (%[b]), %%ymm12\n\t"
        "vmovupd 32(%[b]), %%ymm13\n\t"
        "vbroadcastsd (%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %%ymm0\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %%ymm1\n\t"
        "vbroadcastsd 8(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %%ymm2\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %%ymm3\n\t"
        "vbroadcastsd 16(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %%ymm4\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %%ymm5\n\t"
        "vbroadcastsd 24(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %%ymm6\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %%ymm7\n\t"
        "vbroadcastsd 32(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %%ymm8\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %%ymm9\n\t"
        "vbroadcastsd 40(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %%ymm10\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %%ymm11\n\t"
        "add $48, %[a]\n\t"
        "add $64, %[b]\n\t"
        "dec %[k]\n\t"
        "jnz 1b\n"
        "2:\n\t"
        "test %[ld], %[ld]\n\t"
        "jz 3f\n\t"
        "vaddpd (%[c]), %%ymm0, %%ymm0\n\tvaddpd 32(%[c]), %%ymm1, %%ymm1\n\t"
        "vaddpd 64(%[c]), %%ymm2, %%ymm2\n\tvaddpd 96(%[c]), %%ymm3, %%ymm3\n\t"
        "vaddpd 128(%[c]), %%ymm4, %%ymm4\n\tvaddpd 160(%[c]), %%ymm5, %%ymm5\n\t"
        "vaddpd 192(%[c]), %%ymm6, %%ymm6\n\tvaddpd 224(%[c]), %%ymm7, %%ymm7\n\t"
        "vaddpd 256(%[c]), %%ymm8, %%ymm8\n\tvaddpd 288(%[c]), %%ymm9, %%ymm9\n\t"
        "vaddpd 320(%[c]), %%ymm10, %%ymm10\n\tvaddpd 352(%[c]), %%ymm11, %%ymm11\n"
        "3:\n\t"
        "vmovupd %%ymm0, (%[c])\n\tvmovupd %%ymm1, 32(%[c])\n\t"
        "vmovupd %%ymm2, 64(%[c])\n\tvmovupd %%ymm3, 96(%[c])\n\t"
        "vmovupd %%ymm4, 128(%[c])\n\tvmovupd %%ymm5, 160(%[c])\n\t"
        "vmovupd %%ymm6, 192(%[c])\n\tvmovupd %%ymm7, 224(%[c])\n\t"
        "vmovupd %%ymm8, 256(%[c])\n\tvmovupd %%ymm9, 288(%[c])\n\t"
        "vmovupd %%ymm10, 320(%[c])\n\tvmovupd %%ymm11, 352(%[c])\n\t"
        "vzeroupper\n"
        : [a] "+r"(ap), [b] "+r"(bp), [k] "+r"(K)
        : [c] "r"(ct), [ld] "r"(load)
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#elif defined(POL_GEMM_AVX2)
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd(), c10 = _mm256_setzero_pd(),
            c11 = _mm256_setzero_pd(), c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd(),
            c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd(), c40 = _mm256_setzero_pd(),
            c41 = _mm256_setzero_pd(), c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
    /* The previous K blocks' partial sums are added after this block's (integers: the order is
     * free), so their loads are off the FMA chains; prefetched now, they are in L1 by then. */
    if (load)
        for (int i = 0; i < MR * NR; i += 8) _mm_prefetch((const char *)(ct + i), _MM_HINT_T0);
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
    if (load) {
        c00 = _mm256_add_pd(c00, _mm256_loadu_pd(ct + 0)); c01 = _mm256_add_pd(c01, _mm256_loadu_pd(ct + 4));
        c10 = _mm256_add_pd(c10, _mm256_loadu_pd(ct + 8)); c11 = _mm256_add_pd(c11, _mm256_loadu_pd(ct + 12));
        c20 = _mm256_add_pd(c20, _mm256_loadu_pd(ct + 16)); c21 = _mm256_add_pd(c21, _mm256_loadu_pd(ct + 20));
        c30 = _mm256_add_pd(c30, _mm256_loadu_pd(ct + 24)); c31 = _mm256_add_pd(c31, _mm256_loadu_pd(ct + 28));
        c40 = _mm256_add_pd(c40, _mm256_loadu_pd(ct + 32)); c41 = _mm256_add_pd(c41, _mm256_loadu_pd(ct + 36));
        c50 = _mm256_add_pd(c50, _mm256_loadu_pd(ct + 40)); c51 = _mm256_add_pd(c51, _mm256_loadu_pd(ct + 44));
    }
    _mm256_storeu_pd(ct + 0, c00); _mm256_storeu_pd(ct + 4, c01);
    _mm256_storeu_pd(ct + 8, c10); _mm256_storeu_pd(ct + 12, c11);
    _mm256_storeu_pd(ct + 16, c20); _mm256_storeu_pd(ct + 20, c21);
    _mm256_storeu_pd(ct + 24, c30); _mm256_storeu_pd(ct + 28, c31);
    _mm256_storeu_pd(ct + 32, c40); _mm256_storeu_pd(ct + 36, c41);
    _mm256_storeu_pd(ct + 40, c50); _mm256_storeu_pd(ct + 44, c51);
#else
    double acc[MR * NR];
    for (int i = 0; i < MR * NR; i++) acc[i] = load ? ct[i] : 0.0;
    for (i64 k = 0; k < K; k++)
        for (int i = 0; i < MR; i++) {
            double a = ap[k * MR + i];
            for (int j = 0; j < NR; j++) acc[i * NR + j] += a * bp[k * NR + j];
        }
    memcpy(ct, acc, sizeof(acc));
#endif
}
