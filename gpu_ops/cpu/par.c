/* Threaded entry points of the elementwise and row kernels (kernels.c / nnops.c's pol1_*).
 *
 * Each output element (or row) is computed by exactly one thread with exactly the operations of
 * the one-thread kernel: the work is cut into contiguous ranges of elements (or whole rows) and
 * pol1_* runs on each range; nothing is reduced across ranges. So the bits cannot depend on the
 * thread count, by construction (tests/gpu_ops/test_fast_threads.py checks it against the
 * reference at several thread counts). Threads are used only from about a millisecond of work
 * per thread (as in gemm.c: on a busy machine every hand-off waits for the scheduler).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;

void pol1_exp_f32(const float *x, float *y, i64 n);
void pol1_log_f32(const float *x, float *y, i64 n);
void pol1_tanh_f32(const float *x, float *y, i64 n);
void pol1_tanh_bwd(const float *dy, const float *y, float *dx, i64 n);
void pol1_gelu_fwd(const float *x, float *y, float *th, i64 n);
void pol1_gelu_bwd(const float *dy, const float *x, const float *th, float *dx, i64 n);
void pol1_relu_fwd(const float *x, float *y, i64 n);
void pol1_relu_bwd(const float *dy, const float *y, float *dx, i64 n);
void pol1_softmax_fwd(const float *x, const float *mx, float *y, i64 R, i64 N, int p);
void pol1_softmax_bwd(const float *y, const float *dy, float *dx, i64 R, i64 N, int p);
void pol1_log_softmax_fwd(const float *x, const float *mx, float *logp, float *prob, const int64_t *target,
                          float *lp_at, i64 R, i64 N, int p);
void pol1_log_softmax_bwd(const float *prob, const float *dy, float *dx, i64 R, i64 N, int p);
void pol1_cross_entropy_bwd(const float *prob, const int64_t *target, float dloss, float nrows, float *dx, i64 R,
                            i64 N);
void pol1_layer_norm_fwd(const float *x, const float *g, const float *b, float *y, float *xhat, float *rstd, i64 R,
                         i64 N, int p, float eps, float nf);
void pol1_sgd_step(float *p, const float *g, float *buf, i64 n, float lr, float mom, float wd, int has_wd);
void pol1_adamw_step(float *p, const float *g, float *m, float *v, i64 n, float lrwd, int has_wd, float b1,
                     float omb1, float b2, float omb2, float step_size, float sqbc2, float eps);

#define PMAXTH 64

static volatile int g_nth = 1;
static volatile double g_min_ns = 1.0e6;
static volatile int g_last_nth = 0;

/* torch's thread count, set by gpu_ops.backend whenever it changes. */
void pol_set_threads(int n) { g_nth = n < 1 ? 1 : (n > PMAXTH ? PMAXTH : n); }

/* Tests: the estimated work per thread below which fewer threads are used (default 1 ms), set
 * to 0 to thread even small inputs; returns the previous value. */
double pol_set_par_min_ns(double ns) { double old = g_min_ns; g_min_ns = ns; return old; }

/* Tests: how many threads the last threaded entry point used (proves the split happened). */
int pol_par_last_nth(void) { return g_last_nth; }

typedef struct {
    const float *i0, *i1, *i2;
    float *o0, *o1, *o2, *o3;
    const int64_t *tg;
    i64 N;
    int p, flag;
    float f[8];
} pargs;

typedef void (*rangefn)(const pargs *c, i64 a, i64 b);

typedef struct {
    rangefn fn;
    const pargs *c;
    i64 a, b;
} part;

static void *run_part(void *arg) {
    part *q = (part *)arg;
    if (q->b > q->a) q->fn(q->c, q->a, q->b);
    return NULL;
}

/* fn over [0, n) items of about ns_per_item each, in up to g_nth contiguous ranges. */
static void par(i64 n, double ns_per_item, rangefn fn, const pargs *c) {
    int nth = g_nth;
    double min_ns = g_min_ns;
    while (nth > 1 && (double)n * ns_per_item < min_ns * nth) nth--;
    if (nth > n) nth = n > 1 ? (int)n : 1;
    g_last_nth = nth;
    if (nth <= 1) {
        if (n > 0) fn(c, 0, n);
        return;
    }
    part parts[PMAXTH];
    pthread_t th[PMAXTH];
    int ok[PMAXTH];
    for (int i = 0; i < nth; i++) {
        parts[i].fn = fn; parts[i].c = c;
        parts[i].a = n * i / nth; parts[i].b = n * (i + 1) / nth;
    }
    for (int i = 1; i < nth; i++) ok[i] = pthread_create(&th[i], NULL, run_part, &parts[i]) == 0;
    run_part(&parts[0]);
    for (int i = 1; i < nth; i++) {
        if (ok[i]) pthread_join(th[i], NULL);
        else run_part(&parts[i]);
    }
}

#define OFF(ptr, k) ((ptr) ? (ptr) + (k) : NULL)

static void r_exp(const pargs *c, i64 a, i64 b) { pol1_exp_f32(c->i0 + a, c->o0 + a, b - a); }
static void r_log(const pargs *c, i64 a, i64 b) { pol1_log_f32(c->i0 + a, c->o0 + a, b - a); }
static void r_tanh(const pargs *c, i64 a, i64 b) { pol1_tanh_f32(c->i0 + a, c->o0 + a, b - a); }
static void r_tanh_bwd(const pargs *c, i64 a, i64 b) { pol1_tanh_bwd(c->i0 + a, c->i1 + a, c->o0 + a, b - a); }
static void r_gelu_fwd(const pargs *c, i64 a, i64 b) { pol1_gelu_fwd(c->i0 + a, c->o0 + a, c->o1 + a, b - a); }
static void r_gelu_bwd(const pargs *c, i64 a, i64 b) {
    pol1_gelu_bwd(c->i0 + a, c->i1 + a, c->i2 + a, c->o0 + a, b - a);
}
static void r_relu_fwd(const pargs *c, i64 a, i64 b) { pol1_relu_fwd(c->i0 + a, c->o0 + a, b - a); }
static void r_relu_bwd(const pargs *c, i64 a, i64 b) { pol1_relu_bwd(c->i0 + a, c->i1 + a, c->o0 + a, b - a); }

void exp_f32(const float *x, float *y, i64 n) { pargs c = {.i0 = x, .o0 = y}; par(n, 2.0, r_exp, &c); }
void log_f32(const float *x, float *y, i64 n) { pargs c = {.i0 = x, .o0 = y}; par(n, 2.0, r_log, &c); }
void tanh_f32(const float *x, float *y, i64 n) { pargs c = {.i0 = x, .o0 = y}; par(n, 3.0, r_tanh, &c); }
void tanh_bwd(const float *dy, const float *y, float *dx, i64 n) {
    pargs c = {.i0 = dy, .i1 = y, .o0 = dx};
    par(n, 0.5, r_tanh_bwd, &c);
}
void gelu_fwd(const float *x, float *y, float *th, i64 n) {
    pargs c = {.i0 = x, .o0 = y, .o1 = th};
    par(n, 3.0, r_gelu_fwd, &c);
}
void gelu_bwd(const float *dy, const float *x, const float *th, float *dx, i64 n) {
    pargs c = {.i0 = dy, .i1 = x, .i2 = th, .o0 = dx};
    par(n, 1.0, r_gelu_bwd, &c);
}
void relu_fwd(const float *x, float *y, i64 n) { pargs c = {.i0 = x, .o0 = y}; par(n, 0.3, r_relu_fwd, &c); }
void relu_bwd(const float *dy, const float *y, float *dx, i64 n) {
    pargs c = {.i0 = dy, .i1 = y, .o0 = dx};
    par(n, 0.4, r_relu_bwd, &c);
}

/* Row kernels: ranges of whole rows (items are rows of N elements). */
static void r_softmax_fwd(const pargs *c, i64 a, i64 b) {
    pol1_softmax_fwd(c->i0 + a * c->N, c->i1 + a, c->o0 + a * c->N, b - a, c->N, c->p);
}
static void r_softmax_bwd(const pargs *c, i64 a, i64 b) {
    pol1_softmax_bwd(c->i0 + a * c->N, c->i1 + a * c->N, c->o0 + a * c->N, b - a, c->N, c->p);
}
static void r_log_softmax_fwd(const pargs *c, i64 a, i64 b) {
    pol1_log_softmax_fwd(c->i0 + a * c->N, c->i1 + a, OFF(c->o0, a * c->N), c->o1 + a * c->N, OFF(c->tg, a),
                         OFF(c->o2, a), b - a, c->N, c->p);
}
static void r_log_softmax_bwd(const pargs *c, i64 a, i64 b) {
    pol1_log_softmax_bwd(c->i0 + a * c->N, c->i1 + a * c->N, c->o0 + a * c->N, b - a, c->N, c->p);
}
static void r_ce_bwd(const pargs *c, i64 a, i64 b) {
    pol1_cross_entropy_bwd(c->i0 + a * c->N, c->tg + a, c->f[0], c->f[1], c->o0 + a * c->N, b - a, c->N);
}
static void r_layer_norm_fwd(const pargs *c, i64 a, i64 b) {
    pol1_layer_norm_fwd(c->i0 + a * c->N, c->i1, c->i2, c->o0 + a * c->N, c->o1 + a * c->N, c->o2 + a, b - a, c->N,
                        c->p, c->f[0], c->f[1]);
}

void softmax_fwd(const float *x, const float *mx, float *y, i64 R, i64 N, int p) {
    pargs c = {.i0 = x, .i1 = mx, .o0 = y, .N = N, .p = p};
    par(R, 4.0 * (double)N, r_softmax_fwd, &c);
}
void softmax_bwd(const float *y, const float *dy, float *dx, i64 R, i64 N, int p) {
    pargs c = {.i0 = y, .i1 = dy, .o0 = dx, .N = N, .p = p};
    par(R, 2.0 * (double)N, r_softmax_bwd, &c);
}
void log_softmax_fwd(const float *x, const float *mx, float *logp, float *prob, const int64_t *target, float *lp_at,
                     i64 R, i64 N, int p) {
    pargs c = {.i0 = x, .i1 = mx, .o0 = logp, .o1 = prob, .tg = target, .o2 = lp_at, .N = N, .p = p};
    par(R, 4.0 * (double)N, r_log_softmax_fwd, &c);
}
void log_softmax_bwd(const float *prob, const float *dy, float *dx, i64 R, i64 N, int p) {
    pargs c = {.i0 = prob, .i1 = dy, .o0 = dx, .N = N, .p = p};
    par(R, 2.0 * (double)N, r_log_softmax_bwd, &c);
}
void cross_entropy_bwd(const float *prob, const int64_t *target, float dloss, float nrows, float *dx, i64 R, i64 N) {
    pargs c = {.i0 = prob, .tg = target, .o0 = dx, .N = N, .f = {dloss, nrows}};
    par(R, 1.0 * (double)N, r_ce_bwd, &c);
}
void layer_norm_fwd(const float *x, const float *g, const float *b, float *y, float *xhat, float *rstd, i64 R, i64 N,
                    int p, float eps, float nf) {
    pargs c = {.i0 = x, .i1 = g, .i2 = b, .o0 = y, .o1 = xhat, .o2 = rstd, .N = N, .p = p, .f = {eps, nf}};
    par(R, 4.0 * (double)N, r_layer_norm_fwd, &c);
}

/* Optimizers: each parameter element's update reads and writes only its own slots. */
static void r_sgd(const pargs *c, i64 a, i64 b) {
    pol1_sgd_step(c->o0 + a, c->i0 + a, OFF(c->o1, a), b - a, c->f[0], c->f[1], c->f[2], c->flag);
}
static void r_adamw(const pargs *c, i64 a, i64 b) {
    pol1_adamw_step(c->o0 + a, c->i0 + a, c->o1 + a, c->o2 + a, b - a, c->f[0], c->flag, c->f[1], c->f[2], c->f[3],
                    c->f[4], c->f[5], c->f[6], c->f[7]);
}

void sgd_step(float *p, const float *g, float *buf, i64 n, float lr, float mom, float wd, int has_wd) {
    pargs c = {.o0 = p, .i0 = g, .o1 = buf, .flag = has_wd, .f = {lr, mom, wd}};
    par(n, 0.5, r_sgd, &c);
}
void adamw_step(float *p, const float *g, float *m, float *v, i64 n, float lrwd, int has_wd, float b1, float omb1,
                float b2, float omb2, float step_size, float sqbc2, float eps) {
    pargs c = {.o0 = p, .i0 = g, .o1 = m, .o2 = v, .flag = has_wd,
               .f = {lrwd, b1, omb1, b2, omb2, step_size, sqbc2, eps}};
    par(n, 1.0, r_adamw, &c);
}
