/* The exact-slice matmul's job description, shared by gemm.c and conv.c (see gemm.c's top). */
#ifndef POL_GEMM_H
#define POL_GEMM_H
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;

/* An operand given by offset tables instead of strides: element (line r, index l along K) of
 * batch b is base[b * batch_stride + lo[r] + io[l]]. Its line exponents are precomputed by the
 * caller (e[b * lines + r], frexp exponents of the lines' max |x|), since a generic pass over
 * the table would cost as much as the packing. The conv's im2col matrix is such an operand
 * (lo: pixel offsets, io: (channel, kernel offset) offsets into the zero-padded input). */
typedef struct {
    const i64 *lo, *io;
    const int32_t *e;
} mmtab;

/* col2im epilogue (batch mode): each batch's [M x N] = [C*k*k x H*W] result
 * goes to scratch and is folded into dx[b] ([C, H, W]) instead of being stored. */
typedef struct {
    float *dx;
    i64 C, H, W, k;
} mmc2i;

typedef struct {
    const float *A, *B, *bias;
    float *C;
    i64 sab, sam, sak, sbb, sbk, sbn, nb, M, K, N;
    int t, tc, brow, nth; /* brow: bias [M] added per row instead of [N] per column */
    const mmtab *ta, *tb; /* NULL: the operand is given by its strides */
    const mmc2i *c2i;     /* NULL: store into C */
    double *raw;          /* not NULL (nb = 1, no bias, tc = 0): the exact integer sums [M x N], not unscaled */
} mmspec;

/* 0, or -1 when out of memory. */
int exact_mm_run(const mmspec *s);

/* gemm_pack.c, gemm.c's inner parts. Micro-tiles are MM_MR x MM_NR; a packed strip of w <= W
 * lines over L indices is p[l * W + i] (zero for i >= w), slices trunc(x * sc[i]). */
#define MM_MR 6
#define MM_NR 8
/* Exponents of the R lines of length L of x (element strides sr between lines, sl along one). */
void mm_line_exps(const float *x, i64 R, i64 L, i64 sr, i64 sl, int32_t *e, uint32_t *tmp);
/* Lines x + i * sr, elements at stride sl. */
void mm_pack_lines(const float *x, i64 w, i64 W, i64 L, i64 sr, i64 sl, const double *sc, double *p);
/* Lines r .. r + w - 1 of a table operand (mmtab), indices l0 .. l0 + L - 1. */
void mm_pack_tab(const float *x, const i64 *lo, const i64 *io, i64 r, i64 w, i64 W, i64 l0, i64 L, const double *sc,
                 double *p);
/* ct[MR][NR] = (load ? ct : +0) + sum over K of ap[k][:] (outer) bp[k][:]. */
void mm_ukernel(i64 K, const double *ap, const double *bp, double *ct, int load);

/* frexp exponent of the largest |x| from its bits; 0 for 0, inf and NaN (like torch.frexp). */
static inline int mm_exp_of_absbits(uint32_t mb) {
    int e = 0;
    float f;
    if (mb == 0 || mb >= 0x7f800000u) return 0;
    memcpy(&f, &mb, 4);
    (void)frexpf(f, &e);
    return e;
}

#endif
