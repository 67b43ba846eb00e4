/* Fused exact-slice matmul (ref.matmul, SPEC.md §10.3) in one pass: slice, integer GEMM, unscale.
 *
 * Same build flags and argument as kernels.c. The GEMM here multiplies and adds integer-valued
 * doubles: |a_int|, |b_int| < 2^t with k * 2^(2t) <= 2^53 (ref.slice_bits), so every product
 * and every partial sum (in any order, any blocking) is an integer of magnitude < 2^53,
 * representable exactly; a multiply, an add or a fused multiply-add of them rounds nothing.
 * The explicit FMAs of the micro-kernel (gemm_pack.c) are therefore value-identical to
 * torch.mm's DGEMM (MKL, any ISA, any blocking) and to the portable fallback loop. Slicing (trunc(x * 2^(t-e)) with
 * e the frexp exponent of the line's max |x|) and unscaling (f32((s + 0) * 2^(ea-t) * 2^(eb-t))
 * then + bias in float32) are the very operations of ref.matmul / mm_slice / mm_unscale.
 */
#define _GNU_SOURCE /* posix_memalign, madvise */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define POL_GEMM_AVX2 1
#endif

#include "gemm.h"

#define MR MM_MR
#define NR MM_NR

static inline double g_pow2d(int k) { uint64_t u = (uint64_t)(k + 1023) << 52; double d; memcpy(&d, &u, 8); return d; }

/* Blocking (BLIS-style, sizes for a 32-64 KiB L1 / 1 MiB L2): a KC x NR panel of B stays in L1
 * while the MC / MR strips of the packed MC x KC block of A (in L2) pass over it; NC bounds the
 * double accumulators of one MC x NC block (used only when K > KC). None of it changes a value. */
#ifndef KC
#define KC 256
#endif
#ifndef MC
#define MC 120 /* multiple of MR */
#endif
#ifndef NCP
#define NCP 64 /* NC = NCP * NR = 512 columns */
#endif
#define MAXTH 64

/* K is cut into equal blocks of at most KC (288 = 144 + 144, not 256 + 32: a short last block
 * runs the micro-kernel at a fraction of its speed); block k0 has kblock(K, k0) rows. */
static inline i64 kblock(i64 K, i64 k0) {
    i64 nkb = (K + KC - 1) / KC, kc = (K + nkb - 1) / nkb;
    return K - k0 < kc ? K - k0 : kc;
}
#ifndef BWIN_BYTES
#define BWIN_BYTES ((double)(64 << 20))
#endif
#ifndef BWIN_PANELS
#define BWIN_PANELS 32
#endif
/* Per-thread scratch above this size is freed after a call instead of kept for the next one. */
#define KEEP_BYTES ((size_t)64 << 20)

typedef struct {
    void *p;
    size_t cap;
} gbuf;

/* Buffers of 128 KiB and more are 2 MiB-aligned and asked to be huge pages: a kept buffer on
 * 4 KiB pages made the packed GEMM 25-30 % slower than a fresh one (measured; physical page
 * placement), on huge pages it is as fast or faster. */
#define HUGE_FROM ((size_t)128 << 10)
#define HUGE_PAGE ((size_t)2 << 20)

static void *gb_get(gbuf *b, size_t need) {
    if (need > b->cap) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
        if (need >= HUGE_FROM) {
            size_t sz = (need + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
            if (posix_memalign(&b->p, HUGE_PAGE, sz) == 0) {
#ifdef MADV_HUGEPAGE
                (void)madvise(b->p, sz, MADV_HUGEPAGE); /* advice only; ignored where unsupported */
#endif
                b->cap = sz;
            } else {
                b->p = NULL;
            }
        } else {
            b->p = malloc(need);
            b->cap = b->p ? need : 0;
        }
    }
    return b->p;
}

static void gb_trim(gbuf *b) {
    if (b->cap > KEEP_BYTES) { free(b->p); b->p = NULL; b->cap = 0; }
}

/* One worker's scratch: kept across calls, so pages are not faulted in and cleared again. */
typedef struct {
    gbuf lines; /* ea, eb (int32), tmp (uint32), sa, fa, sb, fb (double) */
    gbuf bp;    /* packed B: K x (panels * NR) doubles */
    gbuf ap;    /* packed A block: MC x KC doubles */
    gbuf acc;   /* MC x NC double accumulators */
    gbuf cs;    /* col2im epilogue: one batch's result and a padded plane (floats) */
} wscratch;

typedef struct {
    int32_t *ea, *eb;
    uint32_t *tmp;
    double *sa, *fa, *sb, *fb;
} lines;

static int lines_get(wscratch *w, i64 M, i64 N, i64 npan, lines *l) {
    /* tmp holds the rows' scratch at [0, M) and the columns' at [M, M + N): the two are prepared
     * by different threads at once, so they must not share (a race here changed result bits). */
    size_t nd = (size_t)(2 * (M + MR) + 2 * npan * NR);
    char *p = (char *)gb_get(&w->lines, nd * sizeof(double) + (size_t)(M + N + M + N) * 4 + 64);
    if (!p) return -1;
    l->sa = (double *)p; l->fa = l->sa + M + MR; l->sb = l->fa + M + MR; l->fb = l->sb + npan * NR;
    l->ea = (int32_t *)(l->fb + npan * NR); l->eb = l->ea + M; l->tmp = (uint32_t *)(l->eb + N);
    return 0;
}

typedef struct {
    const float *A, *B, *bias;
    float *C;
    i64 sab, sam, sak, sbb, sbk, sbn, nb, M, K, N, npan;
    int t, tc, brow, nth, batch_mode, phase, stream_b;
    const mmtab *ta, *tb;
    const mmc2i *c2i;
    double *raw;
    volatile int failed;
    wscratch *ws;
    lines shared; /* matrix mode: worker 0's line arrays, filled in parallel */
    double *bp;   /* matrix mode: worker 0's packed B */
    i64 pb0, pb1; /* the panels whose packed slices bp holds (matrix mode: a window of them) */
} mmjob;

typedef struct {
    mmjob *job;
    int tid;
} mmarg;

/* The unscale (f32((s + 0) * 2^(ea-t) * 2^(eb-t)), both scalings exact: no double underflow or
 * overflow for float32 exponents) and the bias (float32 add; per column, or per row when brow). */
static void store_tile(const mmjob *j, float *Cb, const double *ct, const lines *l, i64 i0, i64 n0, i64 h, i64 w) {
    const float *bias = j->bias;
    i64 M = j->M, N = j->N;
    if (j->raw) { /* integer sums for a cross-worker reduction (rowshard): no unscale here */
        for (i64 i = 0; i < h; i++) memcpy(j->raw + (i0 + i) * N + n0, ct + i * NR, (size_t)w * sizeof(double));
        return;
    }
    if (j->tc) {
        for (i64 i = 0; i < h; i++) {
            const double *s = ct + i * NR;
            double f = l->fa[i0 + i];
            for (i64 q = 0; q < w; q++) {
                float v = (float)((s[q] + 0.0) * f * l->fb[n0 + q]);
                Cb[(n0 + q) * M + i0 + i] = bias ? v + bias[n0 + q] : v;
            }
        }
        return;
    }
#ifdef POL_GEMM_AVX2
    if (w == NR) { /* same operations as the loop below, 4 lanes at a time */
        __m256d z = _mm256_setzero_pd(), g0 = _mm256_loadu_pd(l->fb + n0), g1 = _mm256_loadu_pd(l->fb + n0 + 4);
        for (i64 i = 0; i < h; i++) {
            float *cr = Cb + (i0 + i) * N + n0;
            __m256d f = _mm256_set1_pd(l->fa[i0 + i]);
            __m256d s0 = _mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(_mm256_loadu_pd(ct + i * NR), z), f), g0);
            __m256d s1 = _mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(_mm256_loadu_pd(ct + i * NR + 4), z), f), g1);
            __m128 v0 = _mm256_cvtpd_ps(s0), v1 = _mm256_cvtpd_ps(s1);
            if (bias && j->brow) {
                __m128 bb = _mm_set1_ps(bias[i0 + i]);
                v0 = _mm_add_ps(v0, bb);
                v1 = _mm_add_ps(v1, bb);
            } else if (bias) {
                v0 = _mm_add_ps(v0, _mm_loadu_ps(bias + n0));
                v1 = _mm_add_ps(v1, _mm_loadu_ps(bias + n0 + 4));
            }
            _mm_storeu_ps(cr, v0);
            _mm_storeu_ps(cr + 4, v1);
        }
        return;
    }
#endif
    for (i64 i = 0; i < h; i++) {
        float *cr = Cb + (i0 + i) * N + n0;
        const double *s = ct + i * NR;
        double f = l->fa[i0 + i];
        if (bias && j->brow) {
            for (i64 q = 0; q < w; q++) cr[q] = (float)((s[q] + 0.0) * f * l->fb[n0 + q]) + bias[i0 + i];
        } else if (bias) {
            for (i64 q = 0; q < w; q++) cr[q] = (float)((s[q] + 0.0) * f * l->fb[n0 + q]) + bias[n0 + q];
        } else {
            for (i64 q = 0; q < w; q++) cr[q] = (float)((s[q] + 0.0) * f * l->fb[n0 + q]);
        }
    }
}

/* Exponents and scales of rows [r0, r1) of A[b]. */
static void prep_rows(const mmjob *j, i64 b, const lines *l, i64 r0, i64 r1) {
    if (r1 <= r0) return;
    if (j->ta) memcpy(l->ea + r0, j->ta->e + b * j->M + r0, (size_t)(r1 - r0) * sizeof(int32_t));
    else mm_line_exps(j->A + b * j->sab + r0 * j->sam, r1 - r0, j->K, j->sam, j->sak, l->ea + r0, l->tmp + r0);
    for (i64 m = r0; m < r1; m++) { l->sa[m] = g_pow2d(j->t - l->ea[m]); l->fa[m] = g_pow2d(l->ea[m] - j->t); }
}

/* Exponents, scales and packed slices of the B panels [p0, p1) of B[b] into bp. Layout: K
 * blocks of KC rows; in the block starting at row k0 (kc rows), panel q is kc x NR doubles at
 * bp + k0 * (pb1 - pb0) * NR + (q - pb0) * kc * NR, [pb0, pb1) the panels bp holds. */
static void prep_panel_scales(const mmjob *j, i64 b, const lines *l, i64 p0, i64 p1) {
    if (p1 <= p0) return;
    i64 n0 = p0 * NR, n1 = p1 * NR < j->N ? p1 * NR : j->N;
    if (j->tb) memcpy(l->eb + n0, j->tb->e + b * j->N + n0, (size_t)(n1 - n0) * sizeof(int32_t));
    else mm_line_exps(j->B + b * j->sbb + n0 * j->sbn, n1 - n0, j->K, j->sbn, j->sbk, l->eb + n0, l->tmp + j->M + n0);
    for (i64 n = n0; n < n1; n++) { l->sb[n] = g_pow2d(j->t - l->eb[n]); l->fb[n] = g_pow2d(l->eb[n] - j->t); }
    for (i64 n = n1; n < p1 * NR; n++) { l->sb[n] = 0.0; l->fb[n] = 0.0; }
}

/* Strip of h <= MR rows from r, K range [k0, k0 + kc) of A[b], packed as integer slices. */
static void pack_a(const mmjob *j, i64 b, i64 r, i64 h, i64 k0, i64 kc, const double *sc, double *p) {
    if (j->ta) mm_pack_tab(j->A + b * j->sab, j->ta->lo, j->ta->io, r, h, MR, k0, kc, sc, p);
    else mm_pack_lines(j->A + b * j->sab + r * j->sam + k0 * j->sak, h, MR, kc, j->sam, j->sak, sc, p);
}

/* Panel q (columns q*NR ...), K range [k0, k0 + kc) of B[b]. */
static void pack_b(const mmjob *j, i64 b, i64 q, i64 k0, i64 kc, const double *sc, double *p) {
    i64 w = j->N - q * NR < NR ? j->N - q * NR : NR;
    if (j->tb) mm_pack_tab(j->B + b * j->sbb, j->tb->lo, j->tb->io, q * NR, w, NR, k0, kc, sc, p);
    else mm_pack_lines(j->B + b * j->sbb + q * NR * j->sbn + k0 * j->sbk, w, NR, kc, j->sbn, j->sbk, sc, p);
}

static void prep_panels(const mmjob *j, i64 b, const lines *l, double *bp, i64 p0, i64 p1) {
    if (p1 <= p0) return;
    prep_panel_scales(j, b, l, p0, p1);
    for (i64 k0 = 0, kc; k0 < j->K; k0 += kc) {
        kc = kblock(j->K, k0);
        double *blk = bp + k0 * (j->pb1 - j->pb0) * NR;
        for (i64 q = p0; q < p1; q++) pack_b(j, b, q, k0, kc, l->sb + q * NR, blk + (q - j->pb0) * kc * NR);
    }
}

/* C[b] rows [m0, m1) x panels [p0, p1), from packed B and the scales in l. */
static void compute_block(const mmjob *j, i64 b, float *Cb, const lines *l, const double *bp, double *ap,
                          double *acc, i64 m0, i64 m1, i64 p0, i64 p1) {
    i64 K = j->K, npb = j->pb1 - j->pb0;
    int one = K <= KC;
    double ct[MR * NR];
    for (i64 jc = p0; jc < p1; jc += NCP) {
        i64 je = jc + NCP < p1 ? jc + NCP : p1;
        for (i64 i0 = m0; i0 < m1; i0 += MC) {
            i64 mc = m1 - i0 < MC ? m1 - i0 : MC;
            i64 ns = (mc + MR - 1) / MR;
            for (i64 k0 = 0, kc; k0 < K; k0 += kc) {
                kc = kblock(K, k0);
                int first = k0 == 0, last = k0 + kc == K;
                for (i64 s = 0; s < ns; s++) {
                    i64 r = i0 + s * MR, h = m1 - r < MR ? m1 - r : MR;
                    pack_a(j, b, r, h, k0, kc, l->sa + r, ap + s * kc * MR);
                }
                const double *blk = bp + k0 * npb * NR;
                for (i64 q = jc; q < je; q++) {
                    i64 n0 = q * NR, w = j->N - n0 < NR ? j->N - n0 : NR;
                    for (i64 s = 0; s < ns; s++) {
                        i64 r = i0 + s * MR, h = m1 - r < MR ? m1 - r : MR;
                        double *t = one ? ct : acc + (s * NCP + (q - jc)) * MR * NR;
                        mm_ukernel(kc, ap + s * kc * MR, blk + (q - j->pb0) * kc * NR, t, !first);
                        if (last) store_tile(j, Cb, t, l, r, n0, h, w);
                    }
                }
            }
        }
    }
}

/* Few rows (M <= MC), one matrix: B is not packed whole beforehand (for a long K that would
 * write and re-read K * N doubles, e.g. 75 MB for a conv weight gradient) but one KC x ncs
 * block at a time into bb (L2-sized), right before the rows' strips pass over it. Up to NCS
 * panels per block, so that all of a narrow B (a conv's 288 columns) is one block and A,
 * whose packing is the im2col gather for a conv's weight gradient, is packed only once. */
#define NCS 40
static void compute_stream(const mmjob *j, const lines *l, double *ap, double *acc, double *bb, i64 p0, i64 p1) {
    i64 K = j->K, M = j->M, ns = (M + MR - 1) / MR;
    int one = K <= KC;
    double ct[MR * NR];
    for (i64 jc = p0; jc < p1; jc += NCS) {
        i64 je = jc + NCS < p1 ? jc + NCS : p1;
        for (i64 k0 = 0, kc; k0 < K; k0 += kc) {
            kc = kblock(K, k0);
            int first = k0 == 0, last = k0 + kc == K;
            for (i64 q = jc; q < je; q++) pack_b(j, 0, q, k0, kc, l->sb + q * NR, bb + (q - jc) * kc * NR);
            for (i64 s = 0; s < ns; s++) {
                i64 r = s * MR, h = M - r < MR ? M - r : MR;
                pack_a(j, 0, r, h, k0, kc, l->sa + r, ap + s * kc * MR);
            }
            for (i64 q = jc; q < je; q++) {
                i64 n0 = q * NR, w = j->N - n0 < NR ? j->N - n0 : NR;
                for (i64 s = 0; s < ns; s++) {
                    i64 r = s * MR, h = M - r < MR ? M - r : MR;
                    double *t = one ? ct : acc + (s * NCS + (q - jc)) * MR * NR;
                    mm_ukernel(kc, ap + s * kc * MR, bb + (q - jc) * kc * NR, t, !first);
                    if (last) store_tile(j, j->C, t, l, r, n0, h, w);
                }
            }
        }
    }
}

static int worker_bufs(wscratch *w, i64 K, double **ap, double **acc) {
    *ap = (double *)gb_get(&w->ap, (size_t)MC * KC * sizeof(double));
    *acc = K > KC ? (double *)gb_get(&w->acc, (size_t)MC * NCP * NR * sizeof(double)) : NULL;
    return (*ap && (K <= KC || *acc)) ? 0 : -1;
}

/* Even split of [0, n) in units of `unit` into nth parts: part `tid` is [*a, *b). */
static void split(i64 n, i64 unit, int nth, int tid, i64 *a, i64 *b) {
    i64 units = (n + unit - 1) / unit;
    i64 lo = units * tid / nth, hi = units * (tid + 1) / nth;
    *a = lo * unit < n ? lo * unit : n;
    *b = hi * unit < n ? hi * unit : n;
}

/* dx[b] from the batch's transposed result d ([C, k, k, H*W]: the column gradients of
 * functional._Conv2d): each element of the zero-padded plane sums its k*k shifted patch
 * gradients one float32 add at a time from +0, offsets in row-major order, as the reference;
 * the adds run along contiguous rows (vectorised across elements, never within one). */
static void col2im_planes(const float *d, const mmc2i *c, i64 b, float *plane) {
    i64 k = c->k, pad = k / 2, H = c->H, W = c->W, hp = H + 2 * pad, wp = W + 2 * pad, hw = H * W;
    for (i64 ch = 0; ch < c->C; ch++) {
        for (i64 q = 0; q < hp * wp; q++) plane[q] = 0.0f;
        for (i64 di = 0; di < k; di++)
            for (i64 dj = 0; dj < k; dj++) {
                const float *src = d + ((ch * k + di) * k + dj) * hw;
                for (i64 y = 0; y < H; y++) {
                    float *dst = plane + (y + di) * wp + dj;
                    const float *s = src + y * W;
                    for (i64 x = 0; x < W; x++) dst[x] = dst[x] + s[x];
                }
            }
        float *out = c->dx + (b * c->C + ch) * hw;
        for (i64 y = 0; y < H; y++) memcpy(out + y * W, plane + (y + pad) * wp + pad, (size_t)W * sizeof(float));
    }
}

static void *mm_worker(void *arg) {
    mmarg *a = (mmarg *)arg;
    mmjob *j = a->job;
    int tid = a->tid;
    wscratch *w = &j->ws[tid];
    double *ap, *acc;
    int bad = worker_bufs(w, j->K, &ap, &acc);
    if (j->batch_mode) { /* whole matrices per worker: b = tid, tid + nth, ... */
        lines l;
        double *bp = (double *)gb_get(&w->bp, (size_t)j->K * j->npan * NR * sizeof(double));
        if (bad || !bp || lines_get(w, j->M, j->N, j->npan, &l)) { j->failed = 1; return NULL; }
        float *cs = NULL, *plane = NULL;
        if (j->c2i) { /* the batch's [C*k*k x H*W] result, then the padded plane col2im adds into */
            const mmc2i *c = j->c2i;
            i64 pad = c->k / 2, np = (c->H + 2 * pad) * (c->W + 2 * pad);
            cs = (float *)gb_get(&w->cs, (size_t)(j->M * j->N + np) * sizeof(float));
            if (!cs) { j->failed = 1; return NULL; }
            plane = cs + j->M * j->N;
        }
        for (i64 b = tid; b < j->nb; b += j->nth) {
            prep_rows(j, b, &l, 0, j->M);
            if (b == tid || j->sbb != 0) /* a broadcast B (batch stride 0) is packed once */
                prep_panels(j, b, &l, bp, 0, j->npan);
            compute_block(j, b, cs ? cs : j->C + b * j->M * j->N, &l, bp, ap, acc, 0, j->M, 0, j->npan);
            if (cs) col2im_planes(cs, j->c2i, b, plane);
        }
        return NULL;
    }
    /* One matrix, all workers: rows and panels are prepared in parallel (phase 0), then each
     * worker computes its share of rows, or of panels when rows are few (phase 1). */
    i64 r0, r1, p0, p1, npw = j->pb1 - j->pb0;
    split(j->M, 1, j->nth, tid, &r0, &r1);
    split(npw, 1, j->nth, tid, &p0, &p1);
    p0 += j->pb0;
    p1 += j->pb0;
    if (j->phase == 0) {
        if (j->pb0 == 0) prep_rows(j, 0, &j->shared, r0, r1);
        if (j->stream_b) prep_panel_scales(j, 0, &j->shared, p0, p1);
        else prep_panels(j, 0, &j->shared, j->bp, p0, p1);
        return NULL;
    }
    if (bad) { j->failed = 1; return NULL; }
    if (j->stream_b) {
        double *bb = (double *)gb_get(&w->bp, (size_t)KC * NCS * NR * sizeof(double));
        if (!bb) { j->failed = 1; return NULL; }
        compute_stream(j, &j->shared, ap, acc, bb, p0, p1);
        return NULL;
    }
    if (j->M >= (i64)j->nth * MR * 4 || npw < j->nth) {
        split(j->M, MR, j->nth, tid, &r0, &r1);
        compute_block(j, 0, j->C, &j->shared, j->bp, ap, acc, r0, r1, j->pb0, j->pb1);
    } else {
        compute_block(j, 0, j->C, &j->shared, j->bp, ap, acc, 0, j->M, p0, p1);
    }
    return NULL;
}

/* Runs mm_worker for tid 0..nth-1 (tid 0 here); a share whose thread cannot start runs here too. */
static void run_workers(mmjob *j) {
    mmarg args[MAXTH];
    pthread_t th[MAXTH];
    int ok[MAXTH];
    for (int i = 0; i < j->nth; i++) { args[i].job = j; args[i].tid = i; ok[i] = 0; }
    for (int i = 1; i < j->nth; i++) ok[i] = pthread_create(&th[i], NULL, mm_worker, &args[i]) == 0;
    mm_worker(&args[0]);
    for (int i = 1; i < j->nth; i++) {
        if (ok[i]) pthread_join(th[i], NULL);
        else mm_worker(&args[i]);
    }
}

static wscratch g_ws[MAXTH];
static pthread_mutex_t g_ws_lock = PTHREAD_MUTEX_INITIALIZER;

int exact_mm_run(const mmspec *sp) {
    mmjob j;
    memset(&j, 0, sizeof(j));
    j.A = sp->A; j.B = sp->B; j.C = sp->C; j.bias = sp->bias;
    j.sab = sp->sab; j.sam = sp->sam; j.sak = sp->sak; j.sbb = sp->sbb; j.sbk = sp->sbk; j.sbn = sp->sbn;
    j.nb = sp->nb; j.M = sp->M; j.K = sp->K; j.N = sp->N; j.t = sp->t; j.tc = sp->tc;
    j.ta = sp->ta; j.tb = sp->tb; j.c2i = sp->c2i; j.brow = sp->brow; j.raw = sp->raw;
    i64 M = j.M, K = j.K, N = j.N, nb = j.nb;
    int nth = sp->nth;
    j.npan = (N + NR - 1) / NR;
    /* Threads only where the work (32 MFLOP, about a millisecond, per thread at least) outweighs
     * starting them: on a busy machine each hand-off waits for the scheduler, so threading many
     * small products made training steps slower, not faster. */
    double flops = 2.0 * (double)M * (double)N * (double)K * (double)nb;
    if (nth > MAXTH) nth = MAXTH;
    if (nth < 1) nth = 1;
    while (nth > 1 && flops < 3.2e7 * nth) nth--;
    j.batch_mode = nb > 1 || j.c2i != NULL;
    if (j.batch_mode && nth > nb) nth = (int)nb;
    j.nth = nth;
    /* Concurrent callers (other Python threads) get private scratch instead of waiting. */
    wscratch priv[MAXTH];
    int owned = pthread_mutex_trylock(&g_ws_lock) == 0;
    if (!owned) memset(priv, 0, sizeof(wscratch) * (size_t)nth);
    j.ws = owned ? g_ws : priv;
    /* Matrix mode packs B one window of panels at a time when all of it would be large (over
     * 64 MB, the kept scratch: at n = 4096, 128 MB, every call faulted in fresh pages, wrote
     * them to memory and read them back). A window of 256 columns (8 MB at K = 4096) stays in
     * the L3 cache while every row block passes over it; A is packed once per window. Measured
     * at n = 4096: 1.17x DGEMM with the whole B, 1.09x with windows of 512 columns, 1.03x with
     * 256, 1.16x with 128 (A packed too often); at n = 2048 (32 MB) windows cost more than they
     * save (0.95x without, 1.03x with windows of 256). */
    i64 win = j.npan;
    j.pb0 = 0;
    j.pb1 = j.npan;
    if (!j.batch_mode) {
        j.stream_b = M <= MC && K > KC;
        if (!j.stream_b && (double)K * (double)j.npan * NR * sizeof(double) > BWIN_BYTES && j.npan > BWIN_PANELS)
            win = BWIN_PANELS;
        j.pb1 = win;
        if (!j.stream_b) j.bp = (double *)gb_get(&j.ws[0].bp, (size_t)K * win * NR * sizeof(double));
        if ((!j.stream_b && !j.bp) || lines_get(&j.ws[0], M, N, j.npan, &j.shared)) j.failed = 1;
    }
    if (!j.failed && j.batch_mode) {
        j.phase = 1;
        run_workers(&j);
    }
    for (i64 w0 = 0; !j.failed && !j.batch_mode && w0 < j.npan; w0 += win) {
        j.pb0 = w0;
        j.pb1 = w0 + win < j.npan ? w0 + win : j.npan;
        j.phase = 0;
        run_workers(&j);
        j.phase = 1;
        run_workers(&j);
    }
    for (int i = 0; i < j.nth || i < 1; i++) {
        if (owned) {
            gb_trim(&j.ws[i].lines); gb_trim(&j.ws[i].bp); gb_trim(&j.ws[i].cs);
        } else {
            free(priv[i].lines.p); free(priv[i].bp.p); free(priv[i].ap.p); free(priv[i].acc.p); free(priv[i].cs.p);
        }
    }
    if (owned) pthread_mutex_unlock(&g_ws_lock);
    return j.failed ? -1 : 0;
}

/* C[b] = ref.matmul(A[b], B[b]) (+ bias) for b < nb. A[b][m][k] is A + b*sab + m*sam + k*sak,
 * B[b][k][n] is B + b*sbb + k*sbk + n*sbn; C is contiguous [nb, M, N], or [nb, N, M] (the result
 * transposed) when tc != 0; bias (or NULL) is [N]. Up to nth threads (each output element is
 * computed by one of them, from the same exact integers). Returns 0, or -1 when out of memory. */
int exact_mm(const float *A, i64 sab, i64 sam, i64 sak, const float *B, i64 sbb, i64 sbk, i64 sbn, float *C,
             const float *bias, i64 nb, i64 M, i64 K, i64 N, int t, int tc, int nth) {
    mmspec s;
    memset(&s, 0, sizeof(s));
    s.A = A; s.B = B; s.C = C; s.bias = bias;
    s.sab = sab; s.sam = sam; s.sak = sak; s.sbb = sbb; s.sbk = sbk; s.sbn = sbn;
    s.nb = nb; s.M = M; s.K = K; s.N = N; s.t = t; s.tc = tc; s.nth = nth;
    return exact_mm_run(&s);
}
