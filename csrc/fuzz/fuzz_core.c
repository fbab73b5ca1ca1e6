/*
 * fuzz_core.c -- a libFuzzer target for every entry point of csrc/trajloss.h.
 *
 * The fuzz bytes are decoded (missing bytes read as zero) into: one entry
 * point, small dimensions with occasional limit values (0, negatives,
 * TL_MAX_DIM, TL_MAX_DIM + 1, 2^61, PTRDIFF_MAX, ...), enum values in and out
 * of range (dtype, kernel, penalty, method), selections (none, lengths incl.
 * out-of-range ones, masks, both), systems in every form (each of A, B and
 * the offset c shared, per sample, per step or both, in batch- or step-major
 * storage with gaps; or malformed: see finish_system), and arrays of doubles
 * that are mostly "moderate" (|x| <= 1e3) but may be 0, -0, NaN, +-inf,
 * DBL_MAX, denormals or raw bit patterns. Every buffer is malloc'ed at
 * exactly the size the API documents (scratch: the *_work_bytes query), so
 * AddressSanitizer reports any access outside it; outputs start as NaN so
 * that an output left unwritten is seen.
 *
 * Invariants (a violation prints the decoded input and aborts):
 *   - the status is a valid tl_status, never TL_ERR_LAPACK ("a bug in trajloss");
 *   - a call whose sizes the API rejects (negative, zero, above TL_MAX_DIM, or
 *     a *_work_bytes() of 0), with a system that is malformed or does not fit
 *     the call (tl_dynamics_check), an unknown dtype or kernel, or without
 *     scratch space, does not return TL_OK; tl_dynamics_check says which
 *     (TL_ERR_SHAPE for sizes, TL_ERR_VALUE otherwise);
 *   - inputs (the system's storage included) are never written;
 *   - TL_OK with finite, moderate inputs (and a growth bound that keeps the
 *     exact result far from overflow) gives finite outputs, and they agree
 *     with naive reference loops written here over each sample's matrices at
 *     each step (rollout, adjoint, final-state error, time weights, losses
 *     and their gradients); values after a sequence's last valid step
 *     (poisoned with NaN at times) never influence a result; the losses are
 *     bit-for-bit those of one thread for any spec.threads, and both kernels
 *     (AUTO, REFERENCE) take and refuse the same calls;
 *   - check_finite refuses exactly the calls with a NaN or inf where the loss
 *     reads, and tl_loss_bad_inputs names exactly those inputs;
 *   - time weights are >= 0, zero at invalid steps, and average 1 per sequence;
 *   - references: "exact" refuses (TL_ERR_SINGULAR) exactly as its rank test
 *     says -- plan.rank.rank < n with r_next <= tol < r_last, tol = max(n,
 *     steps m) eps r_first, or rank -1 (C not finite, never for a moderate
 *     system) -- and TL_OK means rank n and a finite cond(R) >= 1, however
 *     large; its states are the rollout of its controls (with the matrices of
 *     the sample planned for), final_error and energy are what they say, and
 *     x_T reaches xf to the accuracy of a backward-stable solve; a sample
 *     outside a per-sample system's batch is refused; "average" and
 *     "continuous" refuse only for a Gramian cond above TL_COND_LIMIT or
 *     (continuous) a growth above TL_LAW_GROWTH_LIMIT; tl_min_energy_law's
 *     info likewise, and its x(0) is x0 exactly when evaluated forward (x(H)
 *     = xf backward).
 * ASan and UBSan catch the rest.
 *
 * To see what an input decodes to (printed as it is decoded, so also before a
 * crash): FUZZ_CORE_VERBOSE=1 ./build/fuzz_core FILE
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trajloss.h"

#define MAXN 6  /* largest small state / input dimension */
#define MAXB 8  /* largest small batch */
#define MAXT 40 /* largest small number of steps */
#define MODERATE 1e3
#define WORK_CAP ((size_t)1 << 22) /* larger scratch (huge sizes) is not allocated */

static int verbose;

/* FUZZ_CORE_STATS=1: count, per check, how many inputs reached it (printed every
 * 1000 inputs: libFuzzer leaves with _Exit),
 * to see that the reference comparisons are not vacuous. */
enum { ST_EXPM, ST_DISC, ST_ROLL, ST_VJP, ST_FSE, ST_TW, ST_CL, ST_RL, ST_RLG, ST_REF, ST_GRAM,
       ST_LAW, ST_HUGE, ST_THREADS, ST_EXACT, ST_RANK, ST_LAW_END, ST_KERNELS, ST_FORMS,
       ST_MIN_ENERGY, ST_COUNT };
static const char *const stat_names[ST_COUNT] = {
    "expm finite", "discretize finite", "rollout vs reference", "vjp vs reference",
    "final_state_error vs reference", "time weights vs reference", "control loss vs reference",
    "rollout loss finite", "rollout loss vs reference", "reference finite", "gramian finite",
    "min_energy_law finite", "huge-size call made", "threads vs one thread",
    "exact reference reaches xf", "exact refused, rank < n", "law x(0) = x0 / x(H) = xf",
    "both kernels, same status", "per-sample/step system checked", "min_energy checked"};
static unsigned long stats[ST_COUNT];
static int print_stats;
#define STAT(k) (stats[k]++)

static unsigned long inputs;

static void dump_stats(void)
{
    fprintf(stderr, "fuzz_core stat: %-32s %lu\n", "inputs", inputs);
    for (int k = 0; k < ST_COUNT; k++)
        fprintf(stderr, "fuzz_core stat: %-32s %lu\n", stat_names[k], stats[k]);
}
static char desc[4096];
static size_t desc_len;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    if (desc_len >= sizeof desc - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(desc + desc_len, sizeof desc - desc_len, fmt, ap);
    va_end(ap);
    if (k > 0) {
        if (verbose) /* as it is decoded, so it shows even if the call then crashes */
            fputs(desc + desc_len, stderr);
        desc_len += (size_t)k < sizeof desc - desc_len ? (size_t)k : sizeof desc - 1 - desc_len;
    }
}

#define FAIL(...)                                                                       \
    do {                                                                                \
        fprintf(stderr, "\nfuzz_core: invariant violated at %s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                                                   \
        fprintf(stderr, "\n");                                                          \
        fprintf(stderr, "input: %s\n", desc);                                           \
        abort();                                                                        \
    } while (0)
#define CHECK(cond, ...)            \
    do {                            \
        if (!(cond))                \
            FAIL(__VA_ARGS__);      \
    } while (0)

/* ---- decoding ------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

static unsigned rd_u8(reader *r)
{
    if (r->left == 0)
        return 0;
    r->left--;
    return *r->p++;
}

static uint64_t rd_u64(reader *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)rd_u8(r) << (8 * i);
    return v;
}

static double rd_double(reader *r)
{
    static const double special[] = {
        0.0, -0.0, NAN, -NAN, INFINITY, -INFINITY, DBL_MAX, -DBL_MAX, DBL_MIN, -DBL_MIN,
        4.9406564584124654e-324, 1e-310, 1e300, -1e300, 1e154, -1e154, 1e10, 1.0,
        -1.0, 0.5};
    const unsigned c = rd_u8(r);
    if (c < 216) { /* moderate: a 16-bit fraction times 1, 10, 1e3 or 1e-3 */
        static const double scale[] = {1.0, 10.0, MODERATE, 1e-3};
        const int16_t q = (int16_t)(rd_u8(r) | rd_u8(r) << 8);
        return (double)q / 32768.0 * scale[c % 4];
    }
    if (c == 255) {
        uint64_t bits = rd_u64(r);
        double d;
        memcpy(&d, &bits, sizeof d);
        return d;
    }
    return special[(c - 216) % (sizeof special / sizeof special[0])];
}

/*
 * A size: mostly 0 .. small_max, sometimes a limit value (only_negative: the
 * non-small values are negative, for sizes that have no upper limit).
 */
static ptrdiff_t rd_size(reader *r, ptrdiff_t small_max, int only_negative)
{
    static const ptrdiff_t special[] = {
        -1, -2, TL_MAX_DIM, TL_MAX_DIM + 1, TL_MAX_DIM - 1, 2 * TL_MAX_DIM, 2 * TL_MAX_DIM + 1,
        -TL_MAX_DIM - 1, 46341 /* ~ sqrt 2^31 */, -46341,
        (ptrdiff_t)1 << 31, ((ptrdiff_t)1 << 61) - 1, (ptrdiff_t)1 << 61, PTRDIFF_MAX,
        PTRDIFF_MIN, PTRDIFF_MAX / 8, 3037000500 /* ~ sqrt 2^63 */,
    };
    const unsigned c = rd_u8(r);
    if (c < 236)
        return (ptrdiff_t)(c % (unsigned)(small_max + 1));
    const ptrdiff_t v = special[(c - 236) % (sizeof special / sizeof special[0])];
    if (only_negative && v > small_max)
        return v == PTRDIFF_MAX ? -1 : -v;
    return v;
}

static ptrdiff_t clampsz(ptrdiff_t v, ptrdiff_t hi)
{
    return v < 0 ? 0 : (v > hi ? hi : v);
}

/* ---- memory: exact-size allocations, freed after each input ------------- */

enum { MAX_ALLOCS = 160 };
static void *allocs[MAX_ALLOCS];
static int nallocs;

static void *xalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1); /* malloc(0) may be NULL; ASan still guards 1 byte */
    if (p == NULL || nallocs == MAX_ALLOCS) {
        fprintf(stderr, "fuzz_core: out of memory or allocation slots\n");
        abort();
    }
    /* all bytes 0xff, a NaN as a double or float: scratch the callee reads
     * before writing shows, the same way in every run (ASan's own fill
     * covers only the first 4 KiB and leaves the rest as the last user left it) */
    memset(p, 0xff, bytes ? bytes : 1);
    allocs[nallocs++] = p;
    return p;
}

static void free_all(void)
{
    while (nallocs > 0)
        free(allocs[--nallocs]);
}

static double *dalloc(ptrdiff_t count)
{
    return xalloc((size_t)count * sizeof(double));
}

static float *falloc(ptrdiff_t count)
{
    return xalloc((size_t)count * sizeof(float));
}

/* An output buffer, poisoned with NaN so that a value never written is seen. */
static double *dout(ptrdiff_t count)
{
    double *p = dalloc(count);
    for (ptrdiff_t i = 0; i < count; i++)
        p[i] = NAN;
    return p;
}

static float *fout(ptrdiff_t count)
{
    float *p = falloc(count);
    for (ptrdiff_t i = 0; i < count; i++)
        p[i] = NAN;
    return p;
}

static double *dvals(reader *r, ptrdiff_t count)
{
    double *p = dalloc(count);
    for (ptrdiff_t i = 0; i < count; i++)
        p[i] = rd_double(r);
    return p;
}

static float to_float(double x)
{
    if (x > FLT_MAX)
        return INFINITY;
    if (x < -FLT_MAX)
        return -INFINITY;
    return (float)x;
}

/* Round an array through float in place (so a double reference sees what the
 * float kernel sees) and return the float copy. */
static float *as_float(double *x, ptrdiff_t count)
{
    float *f = falloc(count);
    for (ptrdiff_t i = 0; i < count; i++) {
        f[i] = to_float(x[i]);
        x[i] = (double)f[i];
    }
    return f;
}

static void widen(const float *f, double *d, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        d[i] = (double)f[i];
}

/* Inputs must come back unchanged: remember copies, compare after the call. */
enum { MAX_WATCH = 16 };
static struct {
    const void *p;
    void *copy;
    size_t bytes;
    const char *name;
} watch[MAX_WATCH];
static int nwatch;

static void watch_input(const void *p, size_t bytes, const char *name)
{
    if (p == NULL || nwatch == MAX_WATCH)
        return;
    void *c = xalloc(bytes);
    memcpy(c, p, bytes);
    watch[nwatch].p = p, watch[nwatch].copy = c, watch[nwatch].bytes = bytes;
    watch[nwatch].name = name;
    nwatch++;
}

static void check_inputs(void)
{
    for (int i = 0; i < nwatch; i++)
        CHECK(memcmp(watch[i].p, watch[i].copy, watch[i].bytes) == 0, "input %s was modified",
              watch[i].name);
    nwatch = 0;
}

/* ---- predicates ----------------------------------------------------------- */

static int moderate(double x)
{
    return isfinite(x) && fabs(x) <= MODERATE && (x == 0.0 || fabs(x) >= 1e-9);
}

static int all_moderate(const double *x, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        if (!moderate(x[i]))
            return 0;
    return 1;
}

static double max_abs(const double *x, ptrdiff_t count)
{
    double v = 0.0;
    for (ptrdiff_t i = 0; i < count; i++)
        v = fmax(v, fabs(x[i]));
    return v;
}

static int all_finite(const double *x, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/*
 * The check_finite and nonfinite contract of a loss call with status st:
 * TL_OK with check_finite means every element the call reads was finite
 * (inputs_finite: control_reads_finite, rollout_reads_finite -- padding is
 * never read), TL_ERR_NONFINITE means check_finite was set and one was not;
 * with TL_OK, value->nonfinite
 * says whether a value field or a gradient written is inf or NaN.
 */
static void check_finite_contract(const tl_loss_spec *spec, tl_status st, int inputs_finite,
                                  const tl_loss_value *v, int grads_finite)
{
    if (st == TL_OK && spec->check_finite)
        CHECK(inputs_finite, "TL_OK with check_finite and a non-finite input");
    if (st == TL_ERR_NONFINITE)
        CHECK(spec->check_finite && !inputs_finite, "TL_ERR_NONFINITE: check_finite %d, inputs "
              "finite %d", spec->check_finite, inputs_finite);
    if (st == TL_OK) {
        const int values = isfinite(v->total) && isfinite(v->control) &&
                           isfinite(v->trajectory) && isfinite(v->terminal);
        CHECK(v->nonfinite == !(values && grads_finite), "nonfinite = %d with values finite %d "
              "and gradients finite %d", v->nonfinite, values, grads_finite);
    }
}

static void check_status(tl_status s, const char *what)
{
    CHECK((int)s >= 0 && s < TL_STATUS_COUNT, "%s returned an invalid status %d", what, (int)s);
    CHECK(s != TL_ERR_LAPACK, "%s returned TL_ERR_LAPACK (documented as a bug in trajloss)",
          what);
    CHECK(tl_status_message(s) != NULL, "no message for status %d", (int)s);
    note(" -> %s", tl_status_message(s));
}

/* |a - b| <= rel |b| + abs, elementwise */
static void check_close(const char *what, const double *a, const double *b, ptrdiff_t count,
                        double rel, double abs)
{
    for (ptrdiff_t i = 0; i < count; i++)
        CHECK(fabs(a[i] - b[i]) <= rel * fabs(b[i]) + abs, "%s[%td] = %.17g, reference %.17g",
              what, i, a[i], b[i]);
}

/* equal, or both NaN (the payload of a NaN is not a result) */
static void check_same_bits(const char *what, const double *a, const double *b, ptrdiff_t count)
{
    STAT(ST_THREADS);
    for (ptrdiff_t i = 0; i < count; i++)
        CHECK(memcmp(&a[i], &b[i], sizeof(double)) == 0 || (isnan(a[i]) && isnan(b[i])),
              "%s[%td] differs between thread counts: %.17g vs %.17g", what, i, a[i], b[i]);
}

/* max(1, ||A||_inf, ||A||_1): how much one step of x <- A x or lam <- A^T lam can grow */
static double growth(ptrdiff_t n, const double *A)
{
    double g = 1.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double row = 0.0, col = 0.0;
        for (ptrdiff_t j = 0; j < n; j++)
            row += fabs(A[i * n + j]), col += fabs(A[j * n + i]);
        g = fmax(g, fmax(row, col));
    }
    return g;
}

static double norm1(ptrdiff_t r, ptrdiff_t c, const double *A)
{
    double v = 0.0;
    for (ptrdiff_t j = 0; j < c; j++) {
        double col = 0.0;
        for (ptrdiff_t i = 0; i < r; i++)
            col += fabs(A[i * c + j]);
        v = fmax(v, col);
    }
    return v;
}

/* ---- a system ---------------------------------------------------------------
 * The first matrices (Ad, Bd: sample 0 at step 0) are decoded as they always
 * were. A flags byte >= 128 adds a form byte and a layout byte: each of A, B
 * and the offset c is shared, per sample, per step or both (c may also be
 * absent); the storage is batch- or step-major with NaN gaps between the
 * matrices; and a mode may make the tl_dynamics malformed (a batch or steps
 * that do not fit, a negative stride, a reserved slot set, no A, an unknown
 * kind), which every call must refuse. The matrices of the other samples and
 * steps are those of sample 0 at step 0 perturbed by a seeded generator, plus
 * up to three values decoded from the input at chosen places (so that a NaN
 * or an inf can sit in any one of them). The references read them through
 * fz_A/fz_B/fz_c, by (sample, step), never through the tl_dynamics.
 */
enum { FORM_SAMPLE = 1, FORM_STEP = 2, FORM_ABSENT = 4 };
enum { MODE_BATCH = 24, MODE_STEPS, MODE_STRIDE, MODE_STEP_FN, MODE_PARAMS, MODE_NO_A,
       MODE_KIND, MODE_LOOSE_BATCH };

typedef struct {
    ptrdiff_t n, m;   /* as passed */
    ptrdiff_t na, ma; /* as allocated (clamped) */
    double *Ad, *Bd;  /* sample 0, step 0 (as decoded) */
    int callable;     /* sizes are small or ones the API rejects */
    int valid;        /* 1 <= n, m <= TL_MAX_DIM */
    unsigned flags, form, layout;
    int form_of[3];   /* of A, B, c: FORM_* bits, or FORM_ABSENT for c */
    /* after finish_system: */
    ptrdiff_t nb, nk; /* samples and steps the entries hold */
    double *entries[3];
    tl_dynamics dyn;
    int refused;      /* dyn is malformed or does not fit the call: must be refused */
    double grow;      /* max growth() of the A matrices */
    int moderate;
} fz_system;

static int dim_valid(ptrdiff_t d)
{
    return d >= 1 && d <= TL_MAX_DIM;
}

static int dim_callable(ptrdiff_t d)
{
    return d <= MAXN || d > TL_MAX_DIM;
}

static void read_system(reader *r, fz_system *s)
{
    memset(s, 0, sizeof *s);
    s->n = rd_size(r, MAXN, 0);
    s->m = rd_size(r, MAXN, 0);
    s->na = clampsz(s->n, MAXN), s->ma = clampsz(s->m, MAXN);
    s->callable = dim_callable(s->n) && dim_callable(s->m);
    s->valid = dim_valid(s->n) && dim_valid(s->m);
    s->Ad = dvals(r, s->na * s->na);
    s->Bd = dvals(r, s->na * s->ma);
    s->flags = rd_u8(r);
    if (s->flags & 128)
        s->form = rd_u8(r), s->layout = rd_u8(r);
    s->form_of[0] = (int)(s->form & 3), s->form_of[1] = (int)((s->form >> 2) & 3);
    s->form_of[2] = s->flags & 128 && ((s->form >> 4) & 7) < 4 ? (int)((s->form >> 4) & 3)
                                                                : FORM_ABSENT;
    note("n=%td m=%td Ad=[", s->n, s->m);
    for (ptrdiff_t i = 0; i < s->na * s->na && i < 64; i++)
        note("%s%.17g", i ? "," : "", s->Ad[i]);
    note("] Bd=[");
    for (ptrdiff_t i = 0; i < s->na * s->ma && i < 64; i++)
        note("%s%.17g", i ? "," : "", s->Bd[i]);
    note("] ");
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33, x *= 0xff51afd7ed558ccdULL, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* a value in [-1, 1) from (seed, i) */
static double unit(uint64_t seed, uint64_t i)
{
    return (double)(mix(seed * 0x9e3779b97f4a7c15ULL + i) >> 11) * 0x1p-52 - 1.0;
}

static const double *fz_entry(const fz_system *s, int f, ptrdiff_t b, ptrdiff_t k)
{
    const ptrdiff_t size[3] = {s->na * s->na, s->na * s->ma, s->na};
    const int form = s->form_of[f];
    if (s->entries[f] == NULL)
        return NULL;
    return s->entries[f] + ((form & FORM_SAMPLE ? b : 0) * (form & FORM_STEP ? s->nk : 1) +
                            (form & FORM_STEP ? k : 0)) * size[f];
}
static const double *fz_A(const fz_system *s, ptrdiff_t b, ptrdiff_t k)
{
    return fz_entry(s, 0, b, k);
}
static const double *fz_B(const fz_system *s, ptrdiff_t b, ptrdiff_t k)
{
    return fz_entry(s, 1, b, k);
}
static const double *fz_c(const fz_system *s, ptrdiff_t b, ptrdiff_t k)
{
    return fz_entry(s, 2, b, k);
}

/*
 * The system of a call over `batch` sequences of `steps` steps (the sizes as
 * passed; nb, nk the ones allocated, >= 1): the entries of every form, the
 * tl_dynamics over storage laid out as the layout byte says, and whether the
 * call must refuse it.
 */
static void finish_system(reader *r, fz_system *s, ptrdiff_t batch, ptrdiff_t steps,
                          ptrdiff_t nb, ptrdiff_t nk)
{
    const ptrdiff_t n = s->na, m = s->ma, size[3] = {n * n, n * m, n};
    const int step_major = s->layout & 1, gap = (int)((s->layout >> 1) & 3);
    const unsigned mode = s->layout >> 3;
    s->nb = nb > 0 ? nb : 1, s->nk = nk > 0 ? nk : 1;
    s->dyn = tl_dynamics_linear(s->n, s->m, NULL, NULL);
    tl_field *fields[3] = {&s->dyn.A, &s->dyn.B, &s->dyn.c};
    const uint64_t seed = s->flags & 128 ? rd_u8(r) + 1u : 0u;
    int per_sample = 0, per_step = 0;
    for (int f = 0; f < 3; f++) {
        const int form = s->form_of[f];
        if (form == FORM_ABSENT)
            continue;
        per_sample |= form & FORM_SAMPLE, per_step |= form & FORM_STEP;
        const ptrdiff_t eb = form & FORM_SAMPLE ? s->nb : 1, ek = form & FORM_STEP ? s->nk : 1;
        const ptrdiff_t unit_len = size[f] + gap, count = eb * ek;
        double *e = dalloc(count * size[f]), *store = dalloc(count * unit_len);
        for (ptrdiff_t i = 0; i < count * unit_len; i++)
            store[i] = NAN;
        /* entry 0 as decoded (c: decoded here), the others perturbed from it */
        if (f < 2)
            memcpy(e, f == 0 ? s->Ad : s->Bd, (size_t)size[f] * sizeof(double));
        else
            for (ptrdiff_t i = 0; i < n; i++)
                e[i] = rd_double(r);
        for (ptrdiff_t q = 1; q < count; q++)
            for (ptrdiff_t i = 0; i < size[f]; i++)
                e[q * size[f] + i] = e[i] * (1.0 + 0.25 * unit(seed, (uint64_t)(q * 64 + i))) +
                                     (seed ? 0.05 * unit(seed + 7, (uint64_t)(q * 64 + i)) : 0.0);
        const unsigned pokes = s->flags & 128 ? rd_u8(r) % 4 : 0;
        for (unsigned p = 0; p < pokes && count * size[f] > 0; p++) {
            const ptrdiff_t at = (ptrdiff_t)(rd_u64(r) % (uint64_t)(count * size[f]));
            e[at] = rd_double(r);
            note("field %d [%td] = %.17g ", f, at, e[at]);
        }
        if (f == 0 && (s->flags & 1)) /* make each A non-expansive, so long rollouts stay bounded */
            for (ptrdiff_t q = 0; q < count; q++) {
                const double g = growth(n, e + q * size[f]);
                if (isfinite(g) && g > 1.0)
                    for (ptrdiff_t i = 0; i < size[f]; i++)
                        e[q * size[f] + i] /= g;
            }
        ptrdiff_t bs, ss;
        if (step_major)
            bs = form & FORM_SAMPLE ? unit_len : 0, ss = form & FORM_STEP ? eb * unit_len : 0;
        else
            ss = form & FORM_STEP ? unit_len : 0, bs = form & FORM_SAMPLE ? ek * unit_len : 0;
        for (ptrdiff_t b = 0; b < eb; b++)
            for (ptrdiff_t k = 0; k < ek; k++)
                memcpy(store + b * bs + k * ss, e + (b * ek + k) * size[f],
                       (size_t)size[f] * sizeof(double));
        s->entries[f] = e;
        fields[f]->data = store, fields[f]->batch_stride = bs, fields[f]->step_stride = ss;
        watch_input(store, (size_t)(count * unit_len) * sizeof(double), "system");
    }
    s->dyn.batch = per_sample ? batch : 0;
    s->dyn.steps = per_step ? steps : 0;
    /* the first matrices after normalisation (the references of old read these) */
    memcpy(s->Ad, s->entries[0], (size_t)size[0] * sizeof(double));
    s->grow = 1.0, s->moderate = 1;
    for (int f = 0; f < 3; f++) {
        if (s->entries[f] == NULL)
            continue;
        const int form = s->form_of[f];
        const ptrdiff_t count = (form & FORM_SAMPLE ? s->nb : 1) * (form & FORM_STEP ? s->nk : 1);
        s->moderate = s->moderate && all_moderate(s->entries[f], count * size[f]);
        for (ptrdiff_t q = 0; q < count && f == 0; q++)
            s->grow = fmax(s->grow, growth(n, s->entries[0] + q * size[0]));
    }
    s->refused = 0;
    switch (mode) {
    case MODE_BATCH: s->dyn.batch = batch + 1, s->refused = per_sample; break;
    case MODE_STEPS: s->dyn.steps = steps + 1, s->refused = per_step; break;
    case MODE_STRIDE: fields[s->layout % 3]->step_stride = -1, s->refused = 1; break;
    case MODE_STEP_FN: s->dyn.step = (tl_step_fn)(uintptr_t)16, s->refused = 1; break;
    case MODE_PARAMS: s->dyn.params.data = s->Ad, s->dyn.nparams = 1, s->refused = 1; break;
    case MODE_NO_A: s->dyn.A.data = NULL, s->refused = 1; break;
    case MODE_KIND: s->dyn.kind = TL_DYN_COUNT, s->refused = 1; break;
    case MODE_LOOSE_BATCH: if (!per_sample) s->dyn.batch = 3; break; /* unused: harmless */
    default: break;
    }
    note("forms A %d B %d c %d %s gap %d mode %u dyn.batch=%td dyn.steps=%td refused=%d ",
         s->form_of[0], s->form_of[1], s->form_of[2], step_major ? "step-major" : "batch-major",
         gap, mode, s->dyn.batch, s->dyn.steps, s->refused);
}

/* ---- naive references ------------------------------------------------------ */

/* states [K+1][n] of sample b: x_{k+1} = A x_k + B u_k + c (sample b, step k) */
static void ref_rollout_one(const fz_system *s, ptrdiff_t b, ptrdiff_t K, const double *x0,
                            const double *u, double *X)
{
    const ptrdiff_t n = s->na, m = s->ma;
    memcpy(X, x0, (size_t)n * sizeof(double));
    for (ptrdiff_t k = 0; k < K; k++) {
        const double *A = fz_A(s, b, k), *Bm = fz_B(s, b, k), *c = fz_c(s, b, k);
        for (ptrdiff_t i = 0; i < n; i++) {
            double acc = c ? c[i] : 0.0;
            for (ptrdiff_t j = 0; j < n; j++)
                acc += A[i * n + j] * X[k * n + j];
            for (ptrdiff_t j = 0; j < m; j++)
                acc += Bm[i * m + j] * u[k * m + j];
            X[(k + 1) * n + i] = acc;
        }
    }
}

static void ref_rollout(const fz_system *s, ptrdiff_t B, ptrdiff_t T, const double *x0,
                        const double *u, double *X)
{
    for (ptrdiff_t b = 0; b < B; b++)
        ref_rollout_one(s, b, T, x0 + b * s->na, u + b * T * s->ma, X + b * (T + 1) * s->na);
}

/* lam_K = G_K, lam_k = G_k + A_k^T lam_{k+1}; gu[k] = B_k^T lam_{k+1} for k < K (0 after),
 * the matrices of sample b */
static void ref_adjoint(const fz_system *s, ptrdiff_t b, ptrdiff_t T, ptrdiff_t K,
                        const double *G, double *gu, double *gx0)
{
    const ptrdiff_t n = s->na, m = s->ma;
    double lam[MAXN], prev[MAXN];
    for (ptrdiff_t j = 0; j < T * m; j++)
        gu[j] = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        lam[i] = G[K * n + i];
    for (ptrdiff_t k = K - 1; k >= 0; k--) {
        const double *A = fz_A(s, b, k), *Bm = fz_B(s, b, k);
        for (ptrdiff_t j = 0; j < m; j++) {
            double acc = 0.0;
            for (ptrdiff_t i = 0; i < n; i++)
                acc += Bm[i * m + j] * lam[i];
            gu[k * m + j] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            double acc = G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++)
                acc += A[j * n + i] * lam[j];
            prev[i] = acc;
        }
        memcpy(lam, prev, (size_t)n * sizeof(double));
    }
    memcpy(gx0, lam, (size_t)n * sizeof(double));
}

/* max |B| and max |c| over all the system's matrices */
static double fz_max(const fz_system *s, int f)
{
    const ptrdiff_t size[3] = {s->na * s->na, s->na * s->ma, s->na};
    if (s->entries[f] == NULL)
        return 0.0;
    const int form = s->form_of[f];
    const ptrdiff_t count = (form & FORM_SAMPLE ? s->nb : 1) * (form & FORM_STEP ? s->nk : 1);
    return max_abs(s->entries[f], count * size[f]);
}

/* A bound on the states: (T+1) grow^T (|x0| + n m |B| |u| + |c|), the inputs at most MODERATE */
static double state_bound(const fz_system *s, ptrdiff_t T)
{
    const ptrdiff_t n = s->na, m = s->ma;
    return pow(s->grow, (double)T) * (T + 1) * (n * m + 2.0) * MODERATE *
           (1.0 + fz_max(s, 1)) * (1.0 + fz_max(s, 2) / MODERATE);
}

/* ---- selections ------------------------------------------------------------ */

typedef struct {
    tl_selection sel;
    ptrdiff_t Ba, Ta; /* allocated */
    int callable, valid;
    int64_t *lengths;
    unsigned char *mask;
} fz_sel;

static void read_selection(reader *r, fz_sel *z, int allow_big_batch)
{
    memset(z, 0, sizeof *z);
    ptrdiff_t B = rd_size(r, MAXB, 1), T = rd_size(r, MAXT, 1);
    const unsigned c = rd_u8(r);
    if (allow_big_batch && c >= 250 && B >= 0) { /* several chunks for threaded kernels */
        /* 256 sequences a chunk, 4 chunks a worker: 2 workers from 1793 on, 4 from 3841 */
        static const ptrdiff_t big[] = {257, 600, 1793, 2049, 3841, 4100};
        B = big[c - 250], T = T % 6;
    }
    z->Ba = clampsz(B, B > MAXB ? B : MAXB), z->Ta = clampsz(T, MAXT);
    z->sel.batch = B, z->sel.steps = T;
    const unsigned mode = rd_u8(r);
    static const double discounts[] = {1.0, 0.375, 0.9, 2.0, 1e-300, 1e300, 0.0, -1.0,
                                       NAN, INFINITY, 1.0000001, 0.01, 100.0, 5e-324};
    const unsigned dc = rd_u8(r);
    z->sel.discount = dc < 128 ? discounts[dc % 14] : rd_double(r);
    if (mode % 4 == 1 || mode % 4 == 3) {
        z->lengths = xalloc((size_t)z->Ba * sizeof(int64_t));
        for (ptrdiff_t b = 0; b < z->Ba; b++) {
            const unsigned v = rd_u8(r);
            static const int64_t bad[] = {-1, INT64_MIN, INT64_MAX, (int64_t)1 << 32};
            z->lengths[b] = v < 240 ? (int64_t)(v % (unsigned)(z->Ta + 1))
                            : v < 250 ? (int64_t)z->Ta + 1 : bad[v % 4];
        }
        z->sel.lengths = z->lengths;
    }
    if (mode % 4 >= 2) {
        z->mask = xalloc((size_t)(z->Ba * z->Ta));
        for (ptrdiff_t i = 0; i < z->Ba * z->Ta; i++) {
            const unsigned v = rd_u8(r);
            z->mask[i] = (unsigned char)(v % 3 == 0 ? 0 : v);
        }
        z->sel.mask = z->mask;
    }
    z->callable = B <= z->Ba && T <= MAXT;
    int ok = B >= 0 && T >= 0 && !(z->lengths && z->mask) && isfinite(z->sel.discount) &&
             z->sel.discount > 0.0;
    if (z->lengths)
        for (ptrdiff_t b = 0; b < z->Ba && ok; b++)
            ok = z->lengths[b] >= 0 && z->lengths[b] <= T;
    z->valid = ok;
    note("B=%td T=%td discount=%.17g %s ", B, T, z->sel.discount,
         z->lengths && z->mask ? "lengths+mask"
         : z->lengths        ? "lengths"
         : z->mask           ? "mask"
                             : "all");
    if (z->lengths) {
        note("lengths=[");
        for (ptrdiff_t b = 0; b < z->Ba && b < 16; b++)
            note("%s%lld", b ? "," : "", (long long)z->lengths[b]);
        note("] ");
    }
    if (z->mask) {
        note("mask=");
        for (ptrdiff_t i = 0; i < z->Ba * z->Ta && i < 400; i++)
            note("%s%d", i && i % z->Ta == 0 ? "|" : "", z->mask[i] != 0);
        note(" ");
    }
}

static int sel_valid_step(const fz_sel *z, ptrdiff_t b, ptrdiff_t t)
{
    if (z->lengths)
        return t < z->lengths[b];
    if (z->mask)
        return z->mask[b * z->sel.steps + t] != 0;
    return 1;
}

/* count and last valid step of sequence b (valid selections only) */
static ptrdiff_t sel_span(const fz_sel *z, ptrdiff_t b, ptrdiff_t *last)
{
    ptrdiff_t count = 0;
    *last = -1;
    for (ptrdiff_t t = 0; t < z->sel.steps; t++)
        if (sel_valid_step(z, b, t))
            count++, *last = t;
    return count;
}

/* Are elements at .. at + count - 1 of d (or of f, when given) finite? */
static int fz_run_finite(const double *d, const float *f, ptrdiff_t at, ptrdiff_t count)
{
    for (ptrdiff_t i = at; i < at + count; i++)
        if (f ? !isfinite(f[i]) : !isfinite(d[i]))
            return 0;
    return 1;
}

/* Are the elements the control loss reads -- pred and target at the valid
 * steps -- finite? (what check_finite checks; padding is never read) */
static int control_reads_finite(const fz_sel *z, ptrdiff_t D, const double *P, const float *pf,
                                const double *Q, const float *qf)
{
    const ptrdiff_t T = z->sel.steps;
    for (ptrdiff_t b = 0; b < z->sel.batch; b++)
        for (ptrdiff_t t = 0; t < T; t++)
            if (sel_valid_step(z, b, t) && !(fz_run_finite(P, pf, (b * T + t) * D, D) &&
                                            fz_run_finite(Q, qf, (b * T + t) * D, D)))
                return 0;
    return 1;
}

/* The same for a rollout loss, the rule written out, as the TL_IN_* bits of
 * the inputs with a non-finite element read: a sequence with a valid step
 * (the last one L) reads controls 0 .. L when a state term is computed
 * (valid steps only otherwise), x0 (a state term), ref_controls at its valid
 * steps (control term), ref_states at the states scored -- t + 1 for valid
 * t, 0 with include_initial (trajectory term), L + 1 (terminal term without
 * a target) -- and the target (terminal term). Arrays are given as double
 * (d*) or, when f32, float (f*); NULL when absent. */
static unsigned rollout_bad_bits(const fz_sel *z, const tl_loss_spec *spec, ptrdiff_t n,
                                 ptrdiff_t m, const double *U, const float *uf,
                                 const double *X0, const float *x0f, const double *RU,
                                 const float *ruf, const double *RS, const float *rsf,
                                 const double *TG, const float *tgf)
{
    const ptrdiff_t T = z->sel.steps;
    const unsigned terms = spec->terms;
    const int traj = (terms & TL_TERM_TRAJECTORY) != 0, term = (terms & TL_TERM_TERMINAL) != 0;
    const int states = traj || term, has_tg = TG != NULL || tgf != NULL;
    const int has_ru = RU != NULL || ruf != NULL, has_rs = RS != NULL || rsf != NULL;
    unsigned bad = 0;
    for (ptrdiff_t b = 0; b < z->sel.batch; b++) {
        ptrdiff_t last;
        if (sel_span(z, b, &last) == 0)
            continue;
        for (ptrdiff_t t = 0; t <= last; t++) {
            const int valid = sel_valid_step(z, b, t);
            if ((states || valid) && !fz_run_finite(U, uf, (b * T + t) * m, m))
                bad |= TL_IN_CONTROLS;
            if (valid && (terms & TL_TERM_CONTROL) && has_ru &&
                !fz_run_finite(RU, ruf, (b * T + t) * m, m))
                bad |= TL_IN_REF_CONTROLS;
            if (valid && traj && !fz_run_finite(RS, rsf, (b * (T + 1) + t + 1) * n, n))
                bad |= TL_IN_REF_STATES;
        }
        if (states && !fz_run_finite(X0, x0f, b * n, n))
            bad |= TL_IN_X0;
        if (traj && spec->include_initial && !fz_run_finite(RS, rsf, b * (T + 1) * n, n))
            bad |= TL_IN_REF_STATES;
        if (term && has_tg && !fz_run_finite(TG, tgf, b * n, n))
            bad |= TL_IN_TARGET;
        if (term && !has_tg && has_rs &&
            !fz_run_finite(RS, rsf, (b * (T + 1) + last + 1) * n, n))
            bad |= TL_IN_REF_STATES;
    }
    return bad;
}

/* Reference weights of one sequence over indices j of `len` slots: slot j is
 * valid when valid[j]; w_j = g^j |S| / sum_S g^s, in long double with the
 * power relative to the first (g <= 1) or last valid slot. */
static void ref_weights(double g, ptrdiff_t len, const int *valid, double *w)
{
    ptrdiff_t first = -1, last = -1, count = 0;
    for (ptrdiff_t j = 0; j < len; j++) {
        w[j] = 0.0;
        if (valid[j]) {
            if (first < 0)
                first = j;
            last = j, count++;
        }
    }
    if (count == 0)
        return;
    long double norm = 0.0L;
    for (ptrdiff_t j = first; j <= last; j++)
        if (valid[j])
            norm += powl((long double)g, (long double)(g <= 1.0 ? j - first : j - last));
    for (ptrdiff_t j = first; j <= last; j++)
        if (valid[j])
            w[j] = (double)(powl((long double)g, (long double)(g <= 1.0 ? j - first : j - last)) *
                            (long double)count / norm);
}

/* ---- the penalty (as documented in trajloss.h) ------------------------------- */

static double rho(tl_penalty p, double delta, double r, double *d)
{
    if (p == TL_PENALTY_MSE) {
        *d = 2.0 * r;
        return r * r;
    }
    if (p == TL_PENALTY_L1) {
        *d = (double)((r > 0.0) - (r < 0.0));
        return fabs(r);
    }
    if (fabs(r) <= delta) {
        *d = r;
        return 0.5 * r * r;
    }
    *d = r > 0.0 ? delta : -delta;
    return delta * (fabs(r) - 0.5 * delta);
}

/* The penalty of a residual of size r >= 0 under spec's penalty and delta. */
static double rho_abs(const tl_loss_spec *spec, double r)
{
    double d;
    return rho(spec->penalty, spec->delta, r, &d);
}

/* ---- entry points ------------------------------------------------------------ */

static void fuzz_expm(reader *r)
{
    const ptrdiff_t n = rd_size(r, MAXN, 0);
    const size_t bytes = tl_expm_work_bytes(n);
    note("expm n=%td work=%zu ", n, bytes);
    if (!(n <= MAXN || bytes == 0))
        return; /* a valid large size: too big to run per input */
    const ptrdiff_t na = clampsz(n, MAXN);
    double *A = dvals(r, na * na), *E = dout(na * na);
    const int nowork = rd_u8(r) % 16 == 0;
    void *work = nowork ? NULL : xalloc(bytes);
    watch_input(A, (size_t)(na * na) * sizeof(double), "A");
    tl_status s = tl_expm(n, A, E, work, NULL);
    check_status(s, "tl_expm");
    check_inputs();
    if (bytes == 0 || nowork)
        CHECK(s != TL_OK, "TL_OK without valid size or scratch");
    if (s == TL_OK && all_moderate(A, na * na) && norm1(na, na, A) <= 100.0) {
        STAT(ST_EXPM);
        CHECK(all_finite(E, na * na), "exp(A) not finite for ||A||_1 <= 100");
    }
}

static void fuzz_discretize(reader *r)
{
    const ptrdiff_t n = rd_size(r, MAXN, 0), m = rd_size(r, MAXN, 0);
    const int method = (int)(rd_u8(r) % 5) - 1; /* -1 .. 3, 3 is TL_DISC_COUNT */
    const double dt = rd_double(r);
    const size_t bytes = tl_discretize_work_bytes(n, m);
    note("discretize method=%d n=%td m=%td dt=%.17g work=%zu ", method, n, m, dt, bytes);
    if (!dim_callable(n) || !dim_callable(m))
        return;
    const ptrdiff_t na = clampsz(n, MAXN), ma = clampsz(m, MAXN);
    double *A = dvals(r, na * na), *B = dvals(r, na * ma);
    double *Ad = dout(na * na), *Bd = dout(na * ma);
    const int nowork = rd_u8(r) % 16 == 0;
    void *work = nowork ? NULL : xalloc(bytes);
    watch_input(A, (size_t)(na * na) * sizeof(double), "A");
    watch_input(B, (size_t)(na * ma) * sizeof(double), "B");
    tl_status s = tl_discretize((tl_disc_method)method, n, m, A, B, dt, Ad, Bd, work, NULL);
    check_status(s, "tl_discretize");
    check_inputs();
    if (bytes == 0 || nowork || method < 0 || method >= TL_DISC_COUNT)
        CHECK(s != TL_OK, "TL_OK for bad size, method or no scratch");
    if (s == TL_OK && moderate(dt) && all_moderate(A, na * na) && all_moderate(B, na * ma) &&
        dt * (norm1(na, na, A) + norm1(na, ma, B)) <= 100.0) {
        STAT(ST_DISC);
        CHECK(all_finite(Ad, na * na) && all_finite(Bd, na * ma), "Ad, Bd not finite");
        if (method == TL_DISC_EULER) {
            for (ptrdiff_t i = 0; i < na; i++)
                for (ptrdiff_t j = 0; j < na; j++)
                    CHECK(Ad[i * na + j] == (i == j) + dt * A[i * na + j] ||
                              fabs(Ad[i * na + j] - ((i == j) + dt * A[i * na + j])) <= 1e-15,
                          "euler Ad[%td][%td]", i, j);
        }
    }
}

/* rollout and its vjp in either dtype, checked against ref_rollout / ref_adjoint */
static void fuzz_rollout(reader *r, int f32, int vjp)
{
    fz_system s;
    note("%s%s ", vjp ? "rollout_vjp" : "rollout", f32 ? "_f32" : "_f64");
    read_system(r, &s);
    const ptrdiff_t B = rd_size(r, MAXB, 1), T = rd_size(r, MAXT, 1);
    const size_t bytes = tl_rollout_work_bytes(s.n, s.m);
    note("B=%td T=%td work=%zu ", B, T, bytes);
    if (!s.callable)
        return;
    const ptrdiff_t n = s.na, m = s.ma, Ba = clampsz(B, MAXB), Ta = clampsz(T, MAXT);
    finish_system(r, &s, B, T, Ba, Ta);
    const unsigned flags = rd_u8(r);
    const int nowork = flags % 16 == 0;
    void *work = nowork ? NULL : xalloc(bytes);
    tl_dynamics dyn = s.dyn;
    if (flags & 16)
        dyn.B.data = NULL; /* "both matrices are given": must be refused */
    /* now and then a dtype that does not exist: must be refused */
    const tl_dtype dtype = flags % 16 == 1 && (flags & 128) ? (flags & 64 ? TL_DTYPE_COUNT
                                                                         : (tl_dtype)-1)
                           : f32 ? TL_F32 : TL_F64;
    const ptrdiff_t nx = Ba * n, nu = Ba * Ta * m, ns = Ba * (Ta + 1) * n;
    tl_status st;
    int ok_inputs;
    double *Xd = dalloc(ns), *gud = dalloc(nu), *gxd = dalloc(nx); /* outputs as double */
    double *X0 = NULL, *U = NULL, *G = NULL;
    const int want_gu = !(flags & 32), want_gx = !(flags & 64);
    if (!vjp) {
        X0 = dvals(r, nx), U = dvals(r, nu);
        if (f32) {
            float *x0f = as_float(X0, nx), *uf = as_float(U, nu), *sf = fout(ns);
            watch_input(x0f, (size_t)nx * sizeof(float), "x0");
            watch_input(uf, (size_t)nu * sizeof(float), "controls");
            st = tl_rollout(&dyn, dtype, B, T, x0f, uf, sf, work);
            widen(sf, Xd, ns);
        } else {
            double *sd = dout(ns);
            watch_input(X0, (size_t)nx * sizeof(double), "x0");
            watch_input(U, (size_t)nu * sizeof(double), "controls");
            st = tl_rollout(&dyn, dtype, B, T, X0, U, sd, work);
            memcpy(Xd, sd, (size_t)ns * sizeof(double));
        }
        ok_inputs = all_moderate(X0, nx) && all_moderate(U, nu);
    } else {
        G = dvals(r, ns);
        /* the point of the Jacobians: a linear system does not read it (NULL allowed) */
        const int with_point = (flags & 128) != 0;
        double *P0 = with_point ? dvals(r, nx) : NULL, *PU = with_point ? dvals(r, nu) : NULL;
        if (f32) {
            float *gf = as_float(G, ns), *guf = want_gu ? fout(nu) : NULL;
            float *gxf = want_gx ? fout(nx) : NULL;
            float *p0f = P0 ? as_float(P0, nx) : NULL, *puf = PU ? as_float(PU, nu) : NULL;
            watch_input(gf, (size_t)ns * sizeof(float), "grad_states");
            st = tl_rollout_vjp(&dyn, dtype, B, T, p0f, puf, gf, guf, gxf, work);
            if (guf)
                widen(guf, gud, nu);
            if (gxf)
                widen(gxf, gxd, nx);
        } else {
            double *gu = want_gu ? dout(nu) : NULL, *gx = want_gx ? dout(nx) : NULL;
            watch_input(G, (size_t)ns * sizeof(double), "grad_states");
            st = tl_rollout_vjp(&dyn, dtype, B, T, P0, PU, G, gu, gx, work);
            if (gu)
                memcpy(gud, gu, (size_t)nu * sizeof(double));
            if (gx)
                memcpy(gxd, gx, (size_t)nx * sizeof(double));
        }
        ok_inputs = all_moderate(G, ns);
    }
    check_status(st, "rollout");
    check_inputs();
    if (!s.valid || B < 0 || T < 0 || nowork || dyn.B.data == NULL || s.refused ||
        dtype != (f32 ? TL_F32 : TL_F64))
        CHECK(st != TL_OK, "TL_OK for bad sizes, system, dtype or no scratch");
    if (st != TL_OK || !ok_inputs || !s.moderate)
        return;
    /* growth bound of the exact result */
    const double bound = state_bound(&s, Ta);
    if (!(bound <= (f32 ? 1e30 : 1e250)))
        return;
    /* float storage rounds each value once; the sums may differ by the rounding
     * of terms as large as the bound */
    const double rel = f32 ? 1.2e-7 : 1e-15, abs = 1e-13 * bound;
    if (!vjp) {
        STAT(ST_ROLL);
        if (s.flags & 128)
            STAT(ST_FORMS);
        CHECK(all_finite(Xd, ns), "rollout states not finite");
        double *R = dalloc(ns);
        ref_rollout(&s, Ba, Ta, X0, U, R);
        check_close("states", Xd, R, ns, rel, abs);
    } else {
        STAT(ST_VJP);
        if (want_gu)
            CHECK(all_finite(gud, nu), "grad_controls not finite");
        if (want_gx)
            CHECK(all_finite(gxd, nx), "grad_x0 not finite");
        double *rgu = dalloc(Ta * m > 0 ? Ta * m : 1), rgx[MAXN];
        for (ptrdiff_t b = 0; b < Ba; b++) {
            const double *Gb = G + b * (Ta + 1) * n;
            ref_adjoint(&s, b, Ta, Ta, Gb, rgu, rgx);
            const double sc = pow(s.grow, (double)Ta) * (Ta + 1) * max_abs(Gb, (Ta + 1) * n) *
                              (1.0 + n * fz_max(&s, 1));
            if (want_gu)
                check_close("grad_controls", gud + b * Ta * m, rgu, Ta * m, rel, 1e-13 * sc);
            if (want_gx)
                check_close("grad_x0", gxd + b * n, rgx, n, rel, 1e-13 * sc);
        }
    }
}

static void fuzz_final_state_error(reader *r, int f32)
{
    fz_system s;
    note("final_state_error%s ", f32 ? "_f32" : "_f64");
    read_system(r, &s);
    const ptrdiff_t B = rd_size(r, MAXB, 1), T = rd_size(r, MAXT, 1);
    const size_t bytes = tl_rollout_work_bytes(s.n, s.m);
    note("B=%td T=%td ", B, T);
    if (!s.callable)
        return;
    const ptrdiff_t n = s.na, m = s.ma, Ba = clampsz(B, MAXB), Ta = clampsz(T, MAXT);
    finish_system(r, &s, B, T, Ba, Ta);
    const unsigned flags = rd_u8(r);
    int64_t *len = NULL;
    int len_ok = 1;
    if (flags & 1) {
        len = xalloc((size_t)Ba * sizeof(int64_t));
        for (ptrdiff_t b = 0; b < Ba; b++) {
            const unsigned v = rd_u8(r);
            len[b] = v < 240 ? (int64_t)(v % (unsigned)(Ta + 1)) : v < 250 ? Ta + 1 : -1;
            len_ok = len_ok && len[b] >= 0 && len[b] <= T;
            note("len[%td]=%lld ", b, (long long)len[b]);
        }
    }
    void *work = flags % 32 == 2 ? NULL : xalloc(bytes);
    double *U = dvals(r, Ba * Ta * m), *X0 = dvals(r, Ba * n), *XF = dvals(r, Ba * n);
    double *err = dalloc(Ba);
    const tl_dtype dtype = f32 ? TL_F32 : TL_F64;
    tl_status st;
    if (len)
        watch_input(len, (size_t)Ba * sizeof(int64_t), "lengths");
    if (f32) {
        float *uf = as_float(U, Ba * Ta * m), *x0f = as_float(X0, Ba * n);
        float *xff = as_float(XF, Ba * n), *ef = fout(Ba);
        watch_input(uf, (size_t)(Ba * Ta * m) * sizeof(float), "controls");
        st = tl_final_state_error(&s.dyn, dtype, B, T, len, uf, x0f, xff, ef, work);
        widen(ef, err, Ba);
    } else {
        double *ed = dout(Ba);
        watch_input(U, (size_t)(Ba * Ta * m) * sizeof(double), "controls");
        st = tl_final_state_error(&s.dyn, dtype, B, T, len, U, X0, XF, ed, work);
        memcpy(err, ed, (size_t)Ba * sizeof(double));
    }
    check_status(st, "final_state_error");
    check_inputs();
    if (!s.valid || B < 0 || T < 0 || work == NULL || !len_ok || s.refused)
        CHECK(st != TL_OK, "TL_OK for bad sizes, system, lengths or no scratch");
    if (st != TL_OK || !s.moderate || !all_moderate(X0, Ba * n) || !all_moderate(XF, Ba * n))
        return;
    const double bound = state_bound(&s, Ta);
    if (!(bound <= (f32 ? 1e15 : 1e150)))
        return;
    double *R = dalloc((Ta + 1) * n);
    for (ptrdiff_t b = 0; b < Ba; b++) {
        const ptrdiff_t L = len ? (ptrdiff_t)len[b] : Ta;
        /* only controls before step L are read: poison-insensitive reference */
        if (!all_moderate(U + b * Ta * m, L * m))
            continue;
        ref_rollout_one(&s, b, L, X0 + b * n, U + b * Ta * m, R);
        double sq = 0.0;
        for (ptrdiff_t i = 0; i < n; i++)
            sq += (R[L * n + i] - XF[b * n + i]) * (R[L * n + i] - XF[b * n + i]);
        STAT(ST_FSE);
        CHECK(isfinite(err[b]), "final_state_error[%td] not finite", b);
        CHECK(fabs(err[b] - sqrt(sq)) <= (f32 ? 1e-5 : 1e-10) * (sqrt(sq) + bound * 1e-3 + 1.0),
              "final_state_error[%td] = %.17g, reference %.17g", b, err[b], sqrt(sq));
    }
}

static void fuzz_time_weights(reader *r)
{
    fz_sel z;
    note("time_weights ");
    read_selection(r, &z, 0);
    const size_t bytes = tl_time_weights_work_bytes(z.sel.steps);
    if (!z.callable)
        return;
    const int nowork = rd_u8(r) % 16 == 0;
    void *work = nowork ? NULL : xalloc(bytes);
    double *w = dout(z.Ba * z.Ta);
    if (z.lengths)
        watch_input(z.lengths, (size_t)z.Ba * sizeof(int64_t), "lengths");
    if (z.mask)
        watch_input(z.mask, (size_t)(z.Ba * z.Ta), "mask");
    tl_status st = tl_time_weights(&z.sel, w, work);
    check_status(st, "tl_time_weights");
    check_inputs();
    if (!z.valid || nowork || bytes == 0)
        CHECK(st != TL_OK, "TL_OK for an invalid selection or no scratch");
    if (st != TL_OK)
        return;
    CHECK(z.valid, "TL_OK for an invalid selection");
    const ptrdiff_t T = z.Ta;
    int valid[MAXT + 1];
    double rw[MAXT + 1];
    for (ptrdiff_t b = 0; b < z.Ba; b++) {
        double sum = 0.0;
        ptrdiff_t count = 0;
        for (ptrdiff_t t = 0; t < T; t++) {
            const double v = w[b * T + t];
            valid[t] = sel_valid_step(&z, b, t);
            CHECK(isfinite(v) && v >= 0.0, "weight[%td][%td] = %g", b, t, v);
            if (!valid[t])
                CHECK(v == 0.0, "weight[%td][%td] = %g at an invalid step", b, t, v);
            else
                sum += v, count++;
        }
        if (count > 0)
            CHECK(fabs(sum / (double)count - 1.0) <= 1e-12 * (double)T + 1e-14,
                  "weights of sequence %td average %.17g, not 1", b, sum / (double)count);
        const double g = z.sel.discount;
        if (g >= 1e-2 && g <= 1e2) {
            STAT(ST_TW), ref_weights(g, T, valid, rw);
            check_close("weights", w + b * T, rw, T, 1e-12, 1e-300);
        }
    }
}

/* A loss spec: penalty, delta, weights, terms, include_initial, per-dim weights. */
static void read_spec(reader *r, tl_loss_spec *spec, const fz_sel *z, ptrdiff_t n, ptrdiff_t m)
{
    memset(spec, 0, sizeof *spec);
    spec->sel = z->sel;
    const unsigned p = rd_u8(r);
    spec->penalty = (tl_penalty)(p < 250 ? (int)(p % 3) : p % 2 ? -1 : 3);
    const unsigned d = rd_u8(r);
    spec->delta = d < 200 ? 0.25 * (d % 8) + 0.25 : rd_double(r);
    const unsigned tk = rd_u8(r);
    spec->terms = tk % 9; /* 0 and 8 are invalid */
    /* the kernel from the same byte: AUTO or REFERENCE, now and then neither */
    spec->kernel = tk >= 252 ? (tl_kernel)(tk % 2 ? TL_KERNEL_COUNT : -1)
                             : (tl_kernel)((tk / 9) % 2);
    if (spec->terms == 0 && rd_u8(r) % 2)
        spec->terms = 7;
    const unsigned wsel = rd_u8(r);
    spec->control_weight = wsel & 1 ? rd_double(r) : 1.0;
    spec->trajectory_weight = wsel & 2 ? rd_double(r) : 0.3;
    spec->terminal_weight = wsel & 4 ? rd_double(r) : 0.2;
    static const int inits[] = {0, 1, 2, -1};
    spec->include_initial = inits[(wsel >> 3) % 4];
    spec->feature_weights = (wsel & 32) ? dvals(r, m) : NULL;
    spec->state_weights = (wsel & 64) ? dvals(r, n) : NULL;
    static const int thread_counts[] = {0, 1, 2, 3, 4, -1, 0, 1};
    spec->threads = thread_counts[rd_u8(r) % 8];
    spec->check_finite = (wsel & 128) != 0;
    note("penalty=%d delta=%.17g terms=%u weights=(%.17g,%.17g,%.17g) include_initial=%d "
         "feature_weights=%s state_weights=%s kernel=%d threads=%d check_finite=%d ",
         (int)spec->penalty, spec->delta, spec->terms, spec->control_weight,
         spec->trajectory_weight, spec->terminal_weight, spec->include_initial,
         spec->feature_weights ? "given" : "NULL", spec->state_weights ? "given" : "NULL",
         (int)spec->kernel, spec->threads, spec->check_finite);
}

static int spec_valid(const tl_loss_spec *spec, int rollout)
{
    const int p = (int)spec->penalty;
    if (p < 0 || p >= TL_PENALTY_COUNT || (int)spec->kernel < 0 ||
        spec->kernel >= TL_KERNEL_COUNT)
        return 0;
    if (spec->penalty == TL_PENALTY_HUBER && !(isfinite(spec->delta) && spec->delta > 0.0))
        return 0;
    if (!rollout) /* the control loss uses weight 1 and no terms */
        return 1;
    const double w[3] = {spec->control_weight, spec->trajectory_weight, spec->terminal_weight};
    for (int i = 0; i < 3; i++)
        if (!(isfinite(w[i]) && w[i] >= 0.0))
            return 0;
    return spec->terms != 0 && spec->terms <= 7;
}

/* Poison values the loss must ignore: steps after the last valid one (and, for
 * the control loss and references, every invalid step) become NaN at times. */
static void poison(reader *r, const fz_sel *z, double *a, ptrdiff_t dim, ptrdiff_t rows_per_b,
                   ptrdiff_t offset, int invalid_too)
{
    if (rd_u8(r) % 4 != 0)
        return;
    for (ptrdiff_t b = 0; b < z->Ba; b++) {
        ptrdiff_t last;
        sel_span(z, b, &last);
        for (ptrdiff_t t = 0; t < z->Ta; t++)
            if (t > last || (invalid_too && !sel_valid_step(z, b, t)))
                for (ptrdiff_t d = 0; d < dim; d++)
                    a[(b * rows_per_b + t + offset) * dim + d] = NAN;
    }
}

static void fuzz_control_loss(reader *r, int f32)
{
    fz_sel z;
    tl_loss_spec spec;
    note("control_loss%s ", f32 ? "_f32" : "_f64");
    read_selection(r, &z, 1);
    const ptrdiff_t D = rd_size(r, MAXN, 0);
    note("features=%td ", D);
    read_spec(r, &spec, &z, 0, clampsz(D, MAXN));
    const size_t bytes = tl_loss_work_bytes(NULL, D, &spec);
    note("work=%zu ", bytes);
    if (!z.callable || !(D <= MAXN || bytes == 0) || bytes > WORK_CAP)
        return;
    const ptrdiff_t Da = clampsz(D, MAXN), cnt = z.Ba * z.Ta * Da;
    double *P = dvals(r, cnt), *Q = dvals(r, cnt);
    poison(r, &z, P, Da, z.Ta, 0, 1);
    poison(r, &z, Q, Da, z.Ta, 0, 1);
    const unsigned flags = rd_u8(r);
    const int nowork = flags % 16 == 0, want_grad = !(flags & 16);
    void *work = nowork ? NULL : xalloc(bytes);
    tl_loss_value v;
    memset(&v, 0xff, sizeof v);
    double *g = dalloc(cnt);
    tl_status st;
    if (z.lengths)
        watch_input(z.lengths, (size_t)z.Ba * sizeof(int64_t), "lengths");
    if (z.mask)
        watch_input(z.mask, (size_t)(z.Ba * z.Ta), "mask");
    float *pf = NULL, *qf = NULL;
    if (f32) {
        pf = as_float(P, cnt), qf = as_float(Q, cnt);
        watch_input(pf, (size_t)cnt * sizeof(float), "pred");
        watch_input(qf, (size_t)cnt * sizeof(float), "target");
    } else {
        watch_input(P, (size_t)cnt * sizeof(double), "pred");
        watch_input(Q, (size_t)cnt * sizeof(double), "target");
    }
#define CL_CALL(SPEC, V, G, WORK)                                                 \
    do {                                                                         \
        if (f32) {                                                               \
            float *gf = want_grad ? fout(cnt) : NULL;                            \
            const tl_loss_io io = {TL_F32, pf, NULL, qf, NULL, NULL, gf, NULL};  \
            st = tl_control_loss(SPEC, D, &io, V, WORK);                         \
            if (gf)                                                              \
                widen(gf, G, cnt);                                               \
        } else {                                                                 \
            double *gd = want_grad ? dout(cnt) : NULL;                           \
            const tl_loss_io io = {TL_F64, P, NULL, Q, NULL, NULL, gd, NULL};    \
            st = tl_control_loss(SPEC, D, &io, V, WORK);                         \
            if (gd)                                                              \
                memcpy(G, gd, (size_t)cnt * sizeof(double));                     \
        }                                                                        \
    } while (0)
    CL_CALL(&spec, &v, g, work);
    /* "bit-for-bit the same for any spec->threads": compare with one thread */
    if (st == TL_OK && spec.threads != 1) {
        tl_loss_spec one = spec;
        one.threads = 1;
        const size_t bytes1 = tl_loss_work_bytes(NULL, D, &one);
        if (bytes1 != 0 && bytes1 <= WORK_CAP) {
            tl_loss_value v1;
            double *g1 = dalloc(cnt);
            CL_CALL(&one, &v1, g1, xalloc(bytes1));
            CHECK(st == TL_OK, "TL_OK with %d threads, status %d with 1", spec.threads, (int)st);
            const double a4[4] = {v.total, v.control, v.trajectory, v.terminal};
            const double b4[4] = {v1.total, v1.control, v1.trajectory, v1.terminal};
            check_same_bits("control loss value (total, control, trajectory, terminal)", a4, b4,
                            4);
            if (want_grad)
                check_same_bits("grad", g, g1, cnt);
        }
    }
#undef CL_CALL
    check_status(st, "control_loss");
    check_inputs();
    /* only what the loss reads is checked (sizes are valid when these come back) */
    check_finite_contract(&spec, st,
                          st != TL_OK && st != TL_ERR_NONFINITE
                              ? 1
                              : control_reads_finite(&z, D, P, f32 ? pf : NULL, Q,
                                                     f32 ? qf : NULL),
                          &v, !want_grad || all_finite(g, cnt));
    if (st == TL_OK || st == TL_ERR_NONFINITE) { /* the inputs named: pred and target alone */
        const tl_loss_io io = {f32 ? TL_F32 : TL_F64, f32 ? (void *)pf : (void *)P, NULL,
                               f32 ? (void *)qf : (void *)Q, NULL, NULL, NULL, NULL};
        const unsigned bad = tl_loss_bad_inputs(NULL, D, &spec, &io);
        const unsigned want =
            (control_reads_finite(&z, D, P, f32 ? pf : NULL, P, f32 ? pf : NULL) ? 0u
                                                                                 : TL_IN_CONTROLS) |
            (control_reads_finite(&z, D, Q, f32 ? qf : NULL, Q, f32 ? qf : NULL)
                 ? 0u
                 : TL_IN_REF_CONTROLS);
        CHECK(bad == want, "tl_loss_bad_inputs = %u, the inputs read that are not finite %u",
              bad, want);
    }
    if (!z.valid || nowork || bytes == 0 || D < 1 || !spec_valid(&spec, 0))
        CHECK(st != TL_OK, "TL_OK for an invalid call");
    if (st != TL_OK)
        return;
    if (want_grad)
        for (ptrdiff_t b = 0; b < z.Ba; b++)
            for (ptrdiff_t t = 0; t < z.Ta; t++)
                for (ptrdiff_t d = 0; d < Da && !sel_valid_step(&z, b, t); d++)
                    CHECK(g[(b * z.Ta + t) * Da + d] == 0.0, "grad[%td][%td] = %g at an invalid "
                          "step", b, t, g[(b * z.Ta + t) * Da + d]);
    CHECK((v.total == v.control || (isnan(v.total) && isnan(v.control))) &&
              v.trajectory == 0.0 && v.terminal == 0.0,
          "control loss value fields: total %g control %g trajectory %g terminal %g", v.total,
          v.control, v.trajectory, v.terminal);
    /* moderate over what is read: valid steps, and the spec */
    int mod = (spec.penalty != TL_PENALTY_HUBER || moderate(spec.delta)) &&
              (spec.feature_weights == NULL || all_moderate(spec.feature_weights, Da));
    for (ptrdiff_t b = 0; b < z.Ba && mod; b++)
        for (ptrdiff_t t = 0; t < z.Ta && mod; t++)
            if (sel_valid_step(&z, b, t))
                mod = all_moderate(P + (b * z.Ta + t) * Da, Da) &&
                      all_moderate(Q + (b * z.Ta + t) * Da, Da);
    if (!mod)
        return;
    CHECK(isfinite(v.total), "control loss value not finite");
    if (want_grad)
        CHECK(all_finite(g, cnt), "control loss gradient not finite");
    int nonneg = spec.feature_weights == NULL;
    if (!nonneg) {
        nonneg = 1;
        for (ptrdiff_t d = 0; d < Da; d++)
            nonneg = nonneg && spec.feature_weights[d] >= 0.0;
    }
    if (nonneg)
        CHECK(v.total >= 0.0, "negative loss %g with non-negative weights", v.total);
    if (!(z.sel.discount >= 1e-2 && z.sel.discount <= 1e2))
        return;
    STAT(ST_CL); /* reference value and gradient */
    int valid[MAXT + 1];
    double w[MAXT + 1], sum = 0.0, mag = 0.0, N = 0.0;
    double *rg = dalloc(cnt);
    for (ptrdiff_t b = 0; b < z.Ba; b++)
        for (ptrdiff_t t = 0; t < z.Ta; t++)
            N += sel_valid_step(&z, b, t);
    for (ptrdiff_t b = 0; b < z.Ba; b++) {
        for (ptrdiff_t t = 0; t < z.Ta; t++)
            valid[t] = sel_valid_step(&z, b, t);
        ref_weights(z.sel.discount, z.Ta, valid, w);
        for (ptrdiff_t t = 0; t < z.Ta; t++)
            for (ptrdiff_t d = 0; d < Da; d++) {
                const ptrdiff_t i = (b * z.Ta + t) * Da + d;
                rg[i] = 0.0;
                if (!valid[t])
                    continue;
                const double s = spec.feature_weights ? spec.feature_weights[d] : 1.0;
                double dr;
                const double e = rho(spec.penalty, spec.delta, P[i] - Q[i], &dr);
                sum += w[t] * s * e / (double)Da;
                mag += fabs(w[t] * s * e / (double)Da);
                rg[i] = w[t] * s * dr / (double)Da / N;
            }
    }
    const double tol = f32 ? 1e-6 : 1e-11;
    const double tiny = f32 ? 1e-44 : 1e-300; /* float gradients underflow below 1.4e-45 */
    CHECK(fabs(v.total - sum / N) <= tol * (mag / N + 1e-300),
          "control loss %.17g, reference %.17g", v.total, sum / N);
    if (want_grad)
        for (ptrdiff_t i = 0; i < cnt; i++)
            CHECK(fabs(g[i] - rg[i]) <= (f32 ? 1e-5 : 1e-12) * fabs(rg[i]) + tiny ||
                      (spec.penalty == TL_PENALTY_L1 && fabs(P[i] - Q[i]) < 1e-300),
                  "control loss grad[%td] = %.17g, reference %.17g", i, g[i], rg[i]);
}

static void fuzz_rollout_loss(reader *r, int f32)
{
    fz_system s;
    fz_sel z;
    tl_loss_spec spec;
    note("rollout_loss%s ", f32 ? "_f32" : "_f64");
    read_system(r, &s);
    read_selection(r, &z, 1);
    if (!s.callable)
        return;
    finish_system(r, &s, z.sel.batch, z.sel.steps, z.Ba, z.Ta);
    read_spec(r, &spec, &z, s.na, s.ma);
    const size_t bytes = tl_loss_work_bytes(&s.dyn, 0, &spec);
    note("work=%zu ", bytes);
    if (!z.callable || bytes > WORK_CAP)
        return;
    const ptrdiff_t n = s.na, m = s.ma, Ba = z.Ba, Ta = z.Ta;
    const ptrdiff_t nu = Ba * Ta * m, nx = Ba * n, ns = Ba * (Ta + 1) * n;
    const unsigned flags = rd_u8(r);
    const int nowork = flags % 16 == 0, want_gu = !(flags & 16), want_gx = !(flags & 32);
    const int use_target = (flags & 64) != 0;
    double *U = dvals(r, nu), *X0 = dvals(r, nx), *RU = NULL, *RS = NULL, *TG = NULL;
    if (spec.terms & TL_TERM_CONTROL || (flags & 128))
        RU = dvals(r, nu);
    if (spec.terms & TL_TERM_TRAJECTORY || !use_target || (flags & 128))
        RS = dvals(r, ns);
    if (use_target)
        TG = dvals(r, nx);
    poison(r, &z, U, m, Ta, 0, 0);
    if (RU)
        poison(r, &z, RU, m, Ta, 0, 1);
    if (RS) /* states t + 1 of invalid steps t are never scored */
        poison(r, &z, RS, n, Ta + 1, 1, 1);
    void *work = nowork ? NULL : xalloc(bytes);
    tl_loss_value v;
    memset(&v, 0xff, sizeof v);
    double *gu = dalloc(nu), *gx = dalloc(nx);
    tl_status st;
    if (z.lengths)
        watch_input(z.lengths, (size_t)z.Ba * sizeof(int64_t), "lengths");
    if (z.mask)
        watch_input(z.mask, (size_t)(z.Ba * z.Ta), "mask");
    float *uf = NULL, *x0f = NULL, *ruf = NULL, *rsf = NULL, *tgf = NULL;
    if (f32) {
        uf = as_float(U, nu), x0f = as_float(X0, nx);
        ruf = RU ? as_float(RU, nu) : NULL, rsf = RS ? as_float(RS, ns) : NULL;
        tgf = TG ? as_float(TG, nx) : NULL;
        watch_input(uf, (size_t)nu * sizeof(float), "controls");
        watch_input(x0f, (size_t)nx * sizeof(float), "x0");
        watch_input(ruf, (size_t)nu * sizeof(float), "ref_controls");
        watch_input(rsf, (size_t)ns * sizeof(float), "ref_states");
        watch_input(tgf, (size_t)nx * sizeof(float), "target");
    } else {
        watch_input(U, (size_t)nu * sizeof(double), "controls");
        watch_input(X0, (size_t)nx * sizeof(double), "x0");
        watch_input(RU, (size_t)nu * sizeof(double), "ref_controls");
        watch_input(RS, (size_t)ns * sizeof(double), "ref_states");
        watch_input(TG, (size_t)nx * sizeof(double), "target");
    }
    /* the arrays of the call, in its dtype, with the gradients given by the caller */
    tl_loss_io io = {TL_F64, U, X0, RU, RS, TG, NULL, NULL};
    if (f32)
        io = (tl_loss_io){TL_F32, uf, x0f, ruf, rsf, tgf, NULL, NULL};
    /* one call; the gradients come back widened to double (NaN where not wanted) */
#define RL_CALL(SPEC, V, GU, GX, WORK)                                                     \
    do {                                                                                \
        tl_loss_io io1 = io;                                                            \
        if (f32) {                                                                      \
            float *guf = want_gu ? fout(nu) : NULL, *gxf = want_gx ? fout(nx) : NULL;  \
            io1.grad_controls = guf, io1.grad_x0 = gxf;                                 \
            st = tl_rollout_loss(&s.dyn, SPEC, &io1, V, WORK);                          \
            if (guf)                                                                    \
                widen(guf, GU, nu);                                                     \
            if (gxf)                                                                    \
                widen(gxf, GX, nx);                                                     \
        } else {                                                                        \
            double *gud = want_gu ? dout(nu) : NULL, *gxd = want_gx ? dout(nx) : NULL; \
            io1.grad_controls = gud, io1.grad_x0 = gxd;                                 \
            st = tl_rollout_loss(&s.dyn, SPEC, &io1, V, WORK);                          \
            if (gud)                                                                    \
                memcpy(GU, gud, (size_t)nu * sizeof(double));                           \
            if (gxd)                                                                    \
                memcpy(GX, gxd, (size_t)nx * sizeof(double));                           \
        }                                                                               \
    } while (0)
    RL_CALL(&spec, &v, gu, gx, work);
    const tl_status st0 = st;
    /* "bit-for-bit the same for any spec->threads": compare with one thread */
    if (st0 == TL_OK && spec.threads != 1) {
        tl_loss_spec one = spec;
        one.threads = 1;
        const size_t bytes1 = tl_loss_work_bytes(&s.dyn, 0, &one);
        if (bytes1 != 0 && bytes1 <= WORK_CAP) {
            tl_loss_value v1;
            double *gu1 = dalloc(nu), *gx1 = dalloc(nx);
            RL_CALL(&one, &v1, gu1, gx1, xalloc(bytes1));
            CHECK(st == TL_OK, "TL_OK with %d threads, status %d with 1", spec.threads, (int)st);
            const double a4[4] = {v.total, v.control, v.trajectory, v.terminal};
            const double b4[4] = {v1.total, v1.control, v1.trajectory, v1.terminal};
            check_same_bits("rollout loss value (total, control, trajectory, terminal)", a4, b4,
                            4);
            if (want_gu)
                check_same_bits("grad_controls", gu, gu1, nu);
            if (want_gx)
                check_same_bits("grad_x0", gx, gx1, nx);
        }
    }
    /* the other kernel takes and refuses the same calls (its numbers are
     * checked against the reference below when it is the one drawn) */
    if ((st0 == TL_OK || st0 == TL_ERR_NONFINITE) && work != NULL) {
        tl_loss_spec other = spec;
        other.kernel = spec.kernel == TL_KERNEL_AUTO ? TL_KERNEL_REFERENCE : TL_KERNEL_AUTO;
        const size_t bytes2 = tl_loss_work_bytes(&s.dyn, 0, &other);
        if (bytes2 != 0 && bytes2 <= WORK_CAP) {
            tl_loss_value v2;
            double *gu2 = dalloc(nu), *gx2 = dalloc(nx);
            RL_CALL(&other, &v2, gu2, gx2, xalloc(bytes2));
            STAT(ST_KERNELS);
            CHECK(st == st0, "kernel %d: status %d, kernel %d: status %d", (int)spec.kernel,
                  (int)st0, (int)other.kernel, (int)st);
        }
    }
    st = st0;
#undef RL_CALL
    check_status(st, "rollout_loss");
    {
        /* only what the loss reads is checked (sizes are valid when these come back) */
        const unsigned want_bad =
            st != TL_OK && st != TL_ERR_NONFINITE
                ? 0u
                : f32 ? rollout_bad_bits(&z, &spec, n, m, NULL, uf, NULL, x0f, NULL, ruf, NULL,
                                         rsf, NULL, tgf)
                      : rollout_bad_bits(&z, &spec, n, m, U, NULL, X0, NULL, RU, NULL, RS, NULL,
                                         TG, NULL);
        check_finite_contract(&spec, st, want_bad == 0, &v,
                              (!want_gu || all_finite(gu, nu)) && (!want_gx || all_finite(gx, nx)));
        if (st == TL_OK || st == TL_ERR_NONFINITE) {
            const unsigned bad = tl_loss_bad_inputs(&s.dyn, 0, &spec, &io);
            CHECK(bad == want_bad, "tl_loss_bad_inputs = %u, the inputs read that are not "
                  "finite %u", bad, want_bad);
        }
    }
    check_inputs();
    if (!s.valid || !z.valid || nowork || bytes == 0 || !spec_valid(&spec, 1) || s.refused)
        CHECK(st != TL_OK, "TL_OK for an invalid call");
    if (st != TL_OK)
        return;
    if (s.flags & 128)
        STAT(ST_FORMS);

    /* steps after each sequence's last valid step: gradient exactly zero */
    const unsigned terms = spec.terms;
    const int shift = (terms & TL_TERM_TRAJECTORY) && spec.include_initial ? 1 : 0;
    if (want_gu)
        for (ptrdiff_t b = 0; b < Ba; b++) {
            ptrdiff_t last;
            sel_span(&z, b, &last);
            for (ptrdiff_t i = (last + 1) * m; i < Ta * m; i++)
                CHECK(gu[b * Ta * m + i] == 0.0, "grad_controls[%td][%td] = %g after the last "
                      "valid step", b, i / m, gu[b * Ta * m + i]);
        }

    /* moderate over what may influence the result */
    int mod = s.moderate && (spec.penalty != TL_PENALTY_HUBER || moderate(spec.delta)) &&
              moderate(spec.control_weight) && moderate(spec.trajectory_weight) &&
              moderate(spec.terminal_weight) &&
              (spec.feature_weights == NULL || all_moderate(spec.feature_weights, m)) &&
              (spec.state_weights == NULL || all_moderate(spec.state_weights, n)) &&
              all_moderate(X0, nx) && (TG == NULL || all_moderate(TG, nx));
    for (ptrdiff_t b = 0; b < Ba && mod; b++) {
        ptrdiff_t last;
        sel_span(&z, b, &last);
        mod = all_moderate(U + b * Ta * m, (last + 1) * m) &&
              (RS == NULL || all_moderate(RS + b * (Ta + 1) * n, n));
        for (ptrdiff_t t = 0; t <= last && mod; t++)
            if (sel_valid_step(&z, b, t))
                mod = (RU == NULL || all_moderate(RU + (b * Ta + t) * m, m)) &&
                      (RS == NULL || all_moderate(RS + (b * (Ta + 1) + t + 1) * n, n));
    }
    const double ub = 2.0 * state_bound(&s, Ta); /* states and residuals */
    const double gb = ub * 2e9 * pow(s.grow, (double)Ta) * (Ta + 2.0) * (n * m + 1.0) *
                      (1.0 + fz_max(&s, 1)); /* gradients */
    if (!mod || !(gb <= (f32 ? 1e30 : 1e200)) || !(ub * ub * 1e9 <= 1e200))
        return;
    STAT(ST_RL);
    CHECK(isfinite(v.total) && isfinite(v.control) && isfinite(v.trajectory) &&
              isfinite(v.terminal), "loss value not finite: total %g (%g, %g, %g)", v.total,
          v.control, v.trajectory, v.terminal);
    if (want_gu)
        CHECK(all_finite(gu, nu), "grad_controls not finite");
    if (want_gx)
        CHECK(all_finite(gx, nx), "grad_x0 not finite");
    if (!(z.sel.discount >= 1e-2 && z.sel.discount <= 1e2))
        return;

    STAT(ST_RLG); /* the reference: naive rollout, weights, penalties and adjoint */
    double Nc = 0.0, Nt = 0.0, Nf = 0.0;
    for (ptrdiff_t b = 0; b < Ba; b++) {
        ptrdiff_t last;
        const ptrdiff_t c = sel_span(&z, b, &last);
        Nc += (double)c;
        if (c > 0)
            Nt += (double)(c + shift), Nf += 1.0;
    }
    /* mag: the terms' penalties in absolute value; magx: the same with each
     * residual as large as |value| + |reference|. float32 states carry
     * errors of ~T eps32 of their own size, not of the residual's, so a
     * float32 term is only as accurate as magx says (see relv below). */
    double sum[3] = {0, 0, 0}, mag[3] = {0, 0, 0}, magx[3] = {0, 0, 0};
    double *X = dalloc((Ta + 1) * n), *G = dalloc((Ta + 1) * n), *rgu = dalloc(Ta * m + 1);
    double rgx[MAXN], wc[MAXT + 1], wt[MAXT + 2];
    int valid[MAXT + 2];
    int kink = 0;
    double gscale = 0.0;
    const double sc = spec.control_weight / Nc, st_ = spec.trajectory_weight / Nt,
                 sf = spec.terminal_weight / Nf;
    /* error model: the states may differ from the reference by ~eps ub (other
     * summation orders); that moves values and gradients by at most this */
    double swmax = 1.0, twmax = 1.0;
    if (spec.state_weights)
        swmax = fmax(swmax, max_abs(spec.state_weights, n));
    if (spec.feature_weights)
        swmax = fmax(swmax, max_abs(spec.feature_weights, m));
    twmax = fmax(twmax, fmax(spec.control_weight,
                             fmax(spec.trajectory_weight, spec.terminal_weight)));
    const double adj = pow(s.grow, (double)Ta) * (Ta + 2.0) * (1.0 + n * fz_max(&s, 1));
    const double vabs = 1e-13 * swmax * (Ta + 2.0) * ub * ub + 1e-300;
    const double gabs = 1e-13 * twmax * swmax * (Ta + 2.0) * ub * adj + (f32 ? 1e-44 : 1e-300);
    const double kink_width = 1e-12 * ub;
    /* float32 tiles compute in float32: T + 1 roundings of the states, as
     * tests/test_hypothesis_api.py's f32_rollout_rtol */
    const double relv = 32.0 * (double)(Ta + 1) * FLT_EPSILON;
    for (ptrdiff_t b = 0; b < Ba; b++) {
        ptrdiff_t last;
        const ptrdiff_t c = sel_span(&z, b, &last), K = last + 1;
        if (c == 0) {
            for (ptrdiff_t i = 0; i < Ta * m; i++)
                CHECK(!want_gu || gu[b * Ta * m + i] == 0.0, "grad of an empty sequence");
            for (ptrdiff_t i = 0; i < n; i++)
                CHECK(!want_gx || gx[b * n + i] == 0.0, "grad_x0 of an empty sequence");
            continue;
        }
        ref_rollout_one(&s, b, K, X0 + b * n, U + b * Ta * m, X);
        for (ptrdiff_t t = 0; t < Ta; t++)
            valid[t] = sel_valid_step(&z, b, t);
        ref_weights(z.sel.discount, Ta, valid, wc);
        /* trajectory slots j = 0 .. T: state j, valid when control j-1 is (state 0: shift) */
        valid[Ta + 1] = 0;
        for (ptrdiff_t t = Ta; t >= 1; t--)
            valid[t] = valid[t - 1];
        valid[0] = shift;
        if (shift)
            ref_weights(z.sel.discount, Ta + 1, valid, wt);
        else
            for (ptrdiff_t j = 0; j <= Ta; j++)
                wt[j] = j == 0 ? 0.0 : wc[j - 1];
        for (ptrdiff_t i = 0; i < (K + 1) * n; i++)
            G[i] = 0.0;
        for (ptrdiff_t k = 0; k <= K; k++) {
            const double *rs = RS ? RS + (b * (Ta + 1) + k) * n : NULL;
            for (ptrdiff_t i = 0; i < n; i++) {
                const double si = spec.state_weights ? spec.state_weights[i] : 1.0;
                double dr;
                if ((terms & TL_TERM_TRAJECTORY) && valid[k]) {
                    const double rr = X[k * n + i] - rs[i];
                    const double e = rho(spec.penalty, spec.delta, rr, &dr);
                    kink |= spec.penalty == TL_PENALTY_L1 && fabs(rr) <= kink_width;
                    sum[1] += wt[k] * si * e / (double)n;
                    mag[1] += fabs(wt[k] * si * e / (double)n);
                    magx[1] += fabs(wt[k] * si * rho_abs(&spec, fabs(X[k * n + i]) + fabs(rs[i])) /
                                    (double)n);
                    G[k * n + i] += st_ * wt[k] * si * dr / (double)n;
                }
                if ((terms & TL_TERM_TERMINAL) && k == K) {
                    const double tg = TG ? TG[b * n + i] : RS[(b * (Ta + 1) + K) * n + i];
                    const double rr = X[k * n + i] - tg;
                    const double e = rho(spec.penalty, spec.delta, rr, &dr);
                    kink |= spec.penalty == TL_PENALTY_L1 && fabs(rr) <= kink_width;
                    sum[2] += si * e / (double)n;
                    mag[2] += fabs(si * e / (double)n);
                    magx[2] += fabs(si * rho_abs(&spec, fabs(X[k * n + i]) + fabs(tg)) / (double)n);
                    G[k * n + i] += sf * si * dr / (double)n;
                }
            }
        }
        ref_adjoint(&s, b, Ta, K, G, rgu, rgx);
        for (ptrdiff_t t = 0; t < K; t++)
            if ((terms & TL_TERM_CONTROL) && sel_valid_step(&z, b, t))
                for (ptrdiff_t j = 0; j < m; j++) {
                    const ptrdiff_t i = (b * Ta + t) * m + j;
                    const double sj = spec.feature_weights ? spec.feature_weights[j] : 1.0;
                    double dr;
                    const double e = rho(spec.penalty, spec.delta, U[i] - RU[i], &dr);
                    kink |= spec.penalty == TL_PENALTY_L1 && U[i] == RU[i];
                    sum[0] += wc[t] * sj * e / (double)m;
                    mag[0] += fabs(wc[t] * sj * e / (double)m);
                    magx[0] += fabs(wc[t] * sj * rho_abs(&spec, fabs(U[i]) + fabs(RU[i])) /
                                    (double)m);
                    rgu[t * m + j] += sc * wc[t] * sj * dr / (double)m;
                }
        gscale = fmax(gscale, fmax(max_abs(rgu, Ta * m), max_abs(rgx, n)));
        const double relg = f32 ? relv : 1e-9;
        if (want_gu)
            for (ptrdiff_t i = 0; i < Ta * m; i++)
                CHECK(kink || fabs(gu[b * Ta * m + i] - rgu[i]) <=
                                  relg * (fabs(rgu[i]) + 1e-3 * gscale) + gabs,
                      "grad_controls[%td][%td] = %.17g, reference %.17g", b, i, gu[b * Ta * m + i],
                      rgu[i]);
        if (want_gx)
            for (ptrdiff_t i = 0; i < n; i++)
                CHECK(kink || fabs(gx[b * n + i] - rgx[i]) <=
                                  relg * (fabs(rgx[i]) + 1e-3 * gscale) + gabs,
                      "grad_x0[%td][%td] = %.17g, reference %.17g", b, i, gx[b * n + i], rgx[i]);
    }
    const double got[3] = {v.control, v.trajectory, v.terminal};
    const double N[3] = {Nc, Nt, Nf};
    const double tol = f32 ? relv : 1e-9;
    for (int k = 0; k < 3; k++) {
        const double want = (terms & (1u << k)) ? sum[k] / N[k] : 0.0;
        const double sc2 = (terms & (1u << k)) ? (f32 ? mag[k] + magx[k] : mag[k]) / N[k] : 0.0;
        CHECK(fabs(got[k] - want) <= tol * sc2 + vabs, "term %d = %.17g, reference %.17g", k,
              got[k], want);
    }
    const double total = spec.control_weight * v.control + spec.trajectory_weight * v.trajectory +
                         spec.terminal_weight * v.terminal;
    CHECK(fabs(v.total - total) <= 1e-12 * (fabs(spec.control_weight * v.control) +
                                            fabs(spec.trajectory_weight * v.trajectory) +
                                            fabs(spec.terminal_weight * v.terminal) + 1e-300),
          "total %.17g, weighted sum of terms %.17g", v.total, total);
}

/*
 * The refusal of a plan. exact: C is rank-deficient in the pivoted QR's own
 * terms -- rank < n, |R_kk| of the first refused entry at most tol and of the
 * last kept one above it, tol = max(n, steps m) eps |R_11| -- or C is not
 * finite (rank -1), which a moderate system whose powers stay below 1e20
 * (mod) cannot give. (|R_kk| is non-increasing only up to rounding: a later
 * entry kept may exceed |R_11| by an ulp, so only the tolerance orders them.) average, continuous: the Gramian's condition number is
 * above TL_COND_LIMIT, or (continuous) the states' growth above
 * TL_LAW_GROWTH_LIMIT.
 */
static void check_singular_plan(const tl_ref_plan *plan, int method, int mod)
{
    if (method != TL_REF_EXACT) {
        note("cond=%.6g growth=%.6g ", plan->cond, plan->growth);
        CHECK(!(plan->cond <= TL_COND_LIMIT) ||
                  (method == TL_REF_CONTINUOUS && !(plan->growth <= TL_LAW_GROWTH_LIMIT)),
              "TL_ERR_SINGULAR with cond %g, growth %g", plan->cond, plan->growth);
        return;
    }
    const tl_ref_rank *rk = &plan->rank;
    const ptrdiff_t n = plan->n, N = plan->steps * plan->m;
    note("rank=%td tol=%.6g r_first=%.6g r_last=%.6g r_next=%.6g ", rk->rank, rk->tol,
         rk->r_first, rk->r_last, rk->r_next);
    if (rk->rank == -1) {
        CHECK(!mod, "C not finite for a moderate system");
        return;
    }
    STAT(ST_RANK);
    CHECK(rk->rank >= 0 && rk->rank < n && rk->rank <= N, "TL_ERR_SINGULAR with rank %td of "
          "n=%td, steps m=%td", rk->rank, n, N);
    CHECK(isfinite(rk->r_first) && rk->r_first >= 0.0 &&
              rk->tol == (double)(N > n ? N : n) * DBL_EPSILON * rk->r_first,
          "tol %.17g for |R_11| %.17g", rk->tol, rk->r_first);
    CHECK(rk->r_next <= rk->tol, "first refused |R_kk| %.17g "
          "above tol %.17g", rk->r_next, rk->tol);
    if (rk->rank > 0)
        CHECK(rk->r_last > rk->tol,
              "last kept |R_kk| %.17g, tol %.17g, |R_11| %.17g", rk->r_last, rk->tol,
              rk->r_first);
    else
        CHECK(rk->r_last == 0.0, "rank 0 with last kept |R_kk| %.17g", rk->r_last);
}

/* TL_OK: exact keeps every entry of R (rank n, none refused), a finite
 * condition estimate >= 1 of R that may exceed TL_COND_LIMIT; average and
 * continuous, the Gramian's cond within the limit, and the growth too. */
static void check_ok_plan(const tl_ref_plan *plan, int method)
{
    const double one = 1.0 - 64 * DBL_EPSILON; /* |R| |R^-1 x| >= |x|, up to rounding */
    if (method == TL_REF_EXACT) {
        const tl_ref_rank *rk = &plan->rank;
        CHECK(rk->rank == plan->n && rk->r_next == 0.0 && rk->r_last > rk->tol &&
                  plan->steps * plan->m >= plan->n,
              "TL_OK with rank %td of n=%td, r_last %.17g, tol %.17g, r_next %.17g", rk->rank,
              plan->n, rk->r_last, rk->tol, rk->r_next);
        CHECK(isfinite(plan->cond) && plan->cond >= one, "exact TL_OK with cond %g", plan->cond);
        return;
    }
    CHECK(plan->cond <= TL_COND_LIMIT && plan->cond >= one, "TL_OK with cond %g", plan->cond);
    if (method == TL_REF_CONTINUOUS)
        CHECK(plan->growth <= TL_LAW_GROWTH_LIMIT && plan->growth >= 1.0, /* Ad^0 = I */
              "TL_OK with growth %g", plan->growth);
}

/*
 * exact, moderate inputs: the states are the rollout of the controls (against
 * ref_rollout), final_error is |x_T - xf|_2, and x_T reaches xf to the
 * accuracy of a backward-stable solve, whatever cond(R) is: rounding errors of
 * eps times the magnitudes summed along the way (M_k below bounds |x_k| from
 * |x0|, |u_j| and the growth of Ad, so an ill-conditioned C, whose controls
 * are ~cond(R) |d| / |C|, may miss by ~eps cond(R) |d|, no more). An explicit
 * pseudo-inverse, or normal equations, would miss by another factor cond(R)
 * (or its square) and fail this for cond(R) >> 1e4. The ill-conditioned
 * (cond(R) 1e9 .. 1e15) seeds in fuzz/corpus/cover-ref-exact-* reach it.
 */
static void check_exact_reference(const fz_system *s, ptrdiff_t sample, const tl_ref_plan *plan,
                                  ptrdiff_t Ba, const double *x0, const double *xf,
                                  const double *u, const double *xs, const double *fe)
{
    const ptrdiff_t n = s->na, m = s->ma, T = plan->steps;
    const double g = s->grow, bn = fz_max(s, 1) * (double)m, cn = fz_max(s, 2);
    const double c = 32.0 * (double)(n + m + T * m) * DBL_EPSILON;
    double *R = dalloc((T + 1) * n);
    STAT(ST_EXACT);
    for (ptrdiff_t b = 0; b < Ba; b++) {
        const double *Xb = xs + b * (T + 1) * n, *Rb = R;
        ref_rollout_one(s, sample, T, x0 + b * n, u + b * T * m, R); /* sample's matrices */
        double M = max_abs(x0 + b * n, n) * (double)n; /* a bound on |x_k|_inf */
        for (ptrdiff_t k = 0; k <= T; k++) {
            if (k > 0)
                M = g * M + bn * max_abs(u + (b * T + k - 1) * m, m) + cn;
            for (ptrdiff_t i = 0; i < n; i++)
                CHECK(fabs(Xb[k * n + i] - Rb[k * n + i]) <= c * (double)(k + 1) * M,
                      "states[%td][%td][%td] = %.17g, rollout of the controls %.17g", b, k, i,
                      Xb[k * n + i], Rb[k * n + i]);
        }
        double sq = 0.0;
        for (ptrdiff_t i = 0; i < n; i++)
            sq += (Xb[T * n + i] - xf[b * n + i]) * (Xb[T * n + i] - xf[b * n + i]);
        CHECK(fabs(fe[b] - sqrt(sq)) <= 1e-13 * sqrt(sq) + 1e-300, "final_error[%td] = %.17g, "
              "|x_T - xf| %.17g", b, fe[b], sqrt(sq));
        const double scale = M + max_abs(xf + b * n, n) + pow(g, (double)T) *
                             max_abs(x0 + b * n, n) * (double)n;
        CHECK(fe[b] <= c * (double)(T + n) * scale,
              "final_error[%td] = %.17g misses xf: cond(R) %g, scale %.6g", b, fe[b],
              plan->cond, scale);
    }
}

/* A cancel that stops at its n-th poll. */
typedef struct {
    int polls, stop_at;
} fz_cancel;

static int fz_poll(void *ctx)
{
    fz_cancel *c = (fz_cancel *)ctx;
    return ++c->polls >= c->stop_at;
}

/*
 * tl_min_energy over a batch of a system in any form: one plan when the
 * system and the model are shared, one per sample otherwise (info->plans);
 * refused for a system that does not fit, a time-varying system with a
 * continuous model, missing model arrays; exact, moderate: each sample's
 * states are the rollout of its controls under its own dynamics and reach
 * its xf (check_exact_reference); every method: energy = dt_b sum |u|^2.
 */
static void fuzz_min_energy(reader *r, unsigned mb)
{
    fz_system s;
    const int method = (int)(mb % 5) - 1; /* -1 .. 3 */
    note("min_energy method=%d ", method);
    read_system(r, &s);
    const ptrdiff_t T = rd_size(r, 12, 1), B = rd_size(r, 6, 1);
    note("steps=%td B=%td ", T, B);
    if (!s.callable)
        return;
    const ptrdiff_t n = s.na, m = s.ma, Ta = clampsz(T, 12), Ba = clampsz(B, 6);
    finish_system(r, &s, B, T, Ba, Ta);
    const unsigned flags = rd_u8(r);
    const int cont = method == TL_REF_AVERAGE || method == TL_REF_CONTINUOUS;
    /* the model: dt shared or one a sample; A, B (continuous) shared or one a sample */
    double *dts = dalloc(Ba > 0 ? Ba : 1);
    dts[0] = rd_double(r);
    for (ptrdiff_t b = 1; b < Ba; b++)
        dts[b] = flags & 1 ? dts[0] * (1.0 + 0.1 * (double)b) : dts[0];
    tl_ref_model model = {{dts, flags & 1 ? 1 : 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    double *Am = NULL, *Bm = NULL;
    if (cont && !(flags & 2)) { /* flags & 2: no model, must be refused */
        const ptrdiff_t copies = flags & 4 ? (Ba > 0 ? Ba : 1) : 1;
        Am = dalloc(copies * n * n), Bm = dalloc(copies * n * m);
        for (ptrdiff_t q = 0; q < copies; q++)
            for (ptrdiff_t i = 0; i < n * n || i < n * m; i++) {
                if (i < n * n)
                    Am[q * n * n + i] = s.Ad[i] * (1.0 + 0.05 * (double)q);
                if (i < n * m)
                    Bm[q * n * m + i] = s.Bd[i];
            }
        model.A = (tl_field){Am, flags & 4 ? n * n : 0, 0};
        model.B = (tl_field){Bm, flags & 4 ? n * m : 0, 0};
    }
    const size_t bytes = tl_min_energy_work_bytes(s.n, s.m, T, (tl_ref_method)method);
    note("model dt %s A %s work=%zu ", flags & 1 ? "per-sample" : "shared",
         Am == NULL ? "none" : flags & 4 ? "per-sample" : "shared", bytes);
    if (bytes > WORK_CAP)
        return;
    void *work = flags % 64 == 8 ? NULL : xalloc(bytes);
    double *x0 = dvals(r, Ba * n), *xf = dvals(r, Ba * n);
    double *u = dout(Ba * Ta * m), *xs = dout(Ba * (Ta + 1) * n), *fe = dout(Ba), *en = dout(Ba);
    fz_cancel cc = {0, 1 + (int)(rd_u8(r) % 4)};
    const tl_cancel cancel = {fz_poll, &cc};
    const int with_cancel = (flags & 16) != 0;
    tl_ref_info info;
    memset(&info, 0xA5, sizeof info);
    watch_input(x0, (size_t)(Ba * n) * sizeof(double), "x0");
    watch_input(xf, (size_t)(Ba * n) * sizeof(double), "xf");
    watch_input(dts, (size_t)(Ba > 0 ? Ba : 1) * sizeof(double), "dt");
    const tl_status st = tl_min_energy((tl_ref_method)method, &s.dyn, &model, T, B, x0, xf, u, xs,
                                       fe, en, &info, work, with_cancel ? &cancel : NULL);
    check_status(st, "tl_min_energy");
    check_inputs();
    note("plans=%td sample=%td cond=%.6g ", info.plans, info.sample, info.cond);
    int sys_sample = 0, sys_step = 0; /* the system's fields that vary */
    for (int f = 0; f < 3; f++)
        if (s.form_of[f] != FORM_ABSENT)
            sys_sample |= s.form_of[f] & FORM_SAMPLE, sys_step |= s.form_of[f] & FORM_STEP;
    int dt_bad = 0; /* a period the plans read that is not > 0 */
    for (ptrdiff_t b = 0; b < Ba; b++)
        dt_bad |= !(isfinite(dts[b]) && dts[b] > 0.0);
    /* faults a plan finds count where a plan is made: one for a shared batch
     * (even an empty one), none for an empty per-sample batch */
    const int plans_made = B > 0 || !((flags & 1) || (cont ? (flags & 4) != 0 : sys_sample));
    const int bad = !s.valid || T < 1 || B < 0 || method < 0 || method >= TL_REF_COUNT ||
                    s.refused || work == NULL || bytes == 0 || (cont && Am == NULL) ||
                    (plans_made && ((cont && sys_step) || dt_bad));
    if (bad)
        CHECK(st != TL_OK, "TL_OK for an invalid call");
    if (st == TL_ERR_INTERRUPTED)
        CHECK(with_cancel, "TL_ERR_INTERRUPTED without a cancel");
    if (st != TL_OK)
        return;
    const int per_sample = (flags & 1) || (cont ? (flags & 4) != 0 : sys_sample);
    CHECK(info.plans == (per_sample ? B : 1), "%td plans for a %s batch of %td", info.plans,
          per_sample ? "per-sample" : "shared", B);
    int mod = s.moderate && all_moderate(x0, Ba * n) && all_moderate(xf, Ba * n) &&
              all_moderate(dts, Ba) && pow(s.grow, (double)Ta) <= 1e20;
    if (cont)
        mod = mod && dts[0] * Ta * norm1(n, n, s.Ad) * 1.3 <= 20.0 &&
              dts[0] * Ta * norm1(n, m, s.Bd) <= 1e3;
    if (!mod)
        return;
    STAT(ST_MIN_ENERGY);
    CHECK(all_finite(u, Ba * Ta * m) && all_finite(xs, Ba * (Ta + 1) * n) &&
              all_finite(fe, Ba) && all_finite(en, Ba),
          "min_energy outputs not finite");
    for (ptrdiff_t b = 0; b < Ba; b++) {
        double e = 0.0;
        for (ptrdiff_t i = 0; i < Ta * m; i++)
            e += u[b * Ta * m + i] * u[b * Ta * m + i];
        e *= dts[b];
        CHECK(fabs(en[b] - e) <= 1e-13 * e + 1e-300, "energy[%td] = %.17g, dt sum |u|^2 %.17g",
              b, en[b], e);
        if (method == TL_REF_EXACT) {
            tl_ref_plan one = {0};
            one.steps = T, one.cond = info.cond;
            check_exact_reference(&s, sys_sample ? b : 0, &one, 1, x0 + b * n, xf + b * n,
                                  u + b * Ta * m, xs + b * (Ta + 1) * n, fe + b);
        }
    }
}

static void fuzz_references(reader *r)
{
    fz_system s;
    const unsigned mb = rd_u8(r);
    if (mb >= 200) { /* a batch through tl_min_energy */
        fuzz_min_energy(r, mb);
        return;
    }
    const int method = (int)(mb % 5) - 1; /* -1 .. 3 */
    note("reference method=%d ", method);
    read_system(r, &s);
    const ptrdiff_t T = rd_size(r, 12, 1), B = rd_size(r, 4, 1);
    const double dt = rd_double(r);
    const size_t pbytes = tl_ref_plan_bytes(s.n, s.m, T, (tl_ref_method)method);
    const size_t ibytes = tl_ref_init_work_bytes(s.n, s.m, T, (tl_ref_method)method);
    note("steps=%td B=%td dt=%.17g plan=%zu work=%zu ", T, B, dt, pbytes, ibytes);
    if (!s.callable)
        return;
    const ptrdiff_t n = s.na, m = s.ma, Ta = clampsz(T, 12), Ba = clampsz(B, 4);
    /* the discrete system: its samples (of the per-sample fields) and the one planned for */
    const ptrdiff_t samples = s.flags & 128 ? 1 + rd_u8(r) % 4 : 1;
    finish_system(r, &s, samples, T, samples, Ta);
    if ((s.layout >> 3) == MODE_BATCH) /* no call batch to check it against: keep it true */
        s.dyn.batch = s.form_of[0] & FORM_SAMPLE || s.form_of[1] & FORM_SAMPLE ||
                              (s.form_of[2] != FORM_ABSENT && s.form_of[2] & FORM_SAMPLE)
                          ? samples
                          : 0,
        s.refused = 0;
    const int per_sample = s.dyn.batch > 0;
    ptrdiff_t sample = 0;
    if (s.flags & 128) {
        const unsigned v = rd_u8(r);
        static const ptrdiff_t outside[] = {-1, 4, PTRDIFF_MAX, PTRDIFF_MIN};
        sample = v < 240 ? (ptrdiff_t)(v % (unsigned)samples) : outside[v % 4];
    }
    note("samples=%td sample=%td ", samples, sample);
    /* the continuous model: A, B (s.Ad, s.Bd read as continuous matrices) */
    const unsigned flags = rd_u8(r);
    const int cont = method == TL_REF_AVERAGE || method == TL_REF_CONTINUOUS;
    const double *A = cont || (flags & 1) ? s.Ad : NULL, *Bc = cont || (flags & 1) ? s.Bd : NULL;
    if (cont && (flags & 2))
        A = NULL; /* must be refused */
    void *mem = (flags & 4) && rd_u8(r) % 8 == 0 ? NULL : xalloc(pbytes);
    void *work = (flags & 8) && rd_u8(r) % 8 == 0 ? NULL : xalloc(ibytes);
    tl_ref_plan plan;
    memset(&plan, 0, sizeof plan);
    watch_input(s.Ad, (size_t)(n * n) * sizeof(double), "Ad/A");
    watch_input(s.Bd, (size_t)(n * m) * sizeof(double), "Bd/B");
    tl_status st = tl_ref_plan_init(&plan, mem, (tl_ref_method)method, &s.dyn, sample, A, Bc, dt,
                                    T, work);
    check_status(st, "tl_ref_plan_init");
    check_inputs();
    const int bad = !s.valid || T < 1 || method < 0 || method >= TL_REF_COUNT || !isfinite(dt) ||
                    dt <= 0.0 || (cont && (A == NULL || Bc == NULL)) || mem == NULL ||
                    work == NULL || pbytes == 0 || ibytes == 0 || s.refused ||
                    (per_sample && (sample < 0 || sample >= samples));
    if (bad)
        CHECK(st != TL_OK, "TL_OK for an invalid plan");
    /* dt moderate for every method: the energy sum |u|^2 dt of finite controls
     * may overflow for a huge dt (the exact method reads dt only there) */
    const int mod = !bad && s.moderate && moderate(dt) &&
                    (!cont || (dt * Ta * norm1(n, n, s.Ad) <= 20.0 &&
                               dt * Ta * norm1(n, m, s.Bd) <= 1e3)) &&
                    (cont || pow(s.grow, (double)Ta) <= 1e20);
    if (st == TL_ERR_SINGULAR)
        check_singular_plan(&plan, method, mod);
    if (st != TL_OK)
        return;
    note("cond=%.6g ", plan.cond);
    CHECK(plan.n == s.n && plan.m == s.m && plan.steps == T && (int)plan.method == method,
          "plan sizes");
    check_ok_plan(&plan, method);
    if (mod) {
        if (method == TL_REF_EXACT) /* the sample's own dynamics: no copy */
            CHECK(plan.Ad == NULL && plan.Bd == NULL, "exact plan with Ad, Bd");
        else
            CHECK(all_finite(plan.Ad, n * n) && all_finite(plan.Bd, n * m), "plan not finite");
        CHECK(all_finite(plan.AdT, n * n) && all_finite(plan.K, Ta * m * n) &&
                  all_finite(plan.drift, n),
              "plan not finite");
        if (plan.Q)
            CHECK(all_finite(plan.Q, (Ta + 1) * n * n), "plan Q not finite");
        if (method == TL_REF_EXACT)
            CHECK(all_finite(plan.S, n * n) && all_finite(plan.L, n * n),
                  "plan S, L not finite");
    }
    /* apply to a batch */
    const size_t abytes = tl_ref_apply_work_bytes(s.n, s.m);
    double *x0 = dvals(r, Ba * n), *xf = dvals(r, Ba * n);
    double *u = dout(Ba * Ta * m), *xs = dout(Ba * (Ta + 1) * n), *fe = dout(Ba), *en = dout(Ba);
    void *awork = rd_u8(r) % 16 == 0 ? NULL : xalloc(abytes);
    watch_input(x0, (size_t)(Ba * n) * sizeof(double), "x0");
    watch_input(xf, (size_t)(Ba * n) * sizeof(double), "xf");
    st = tl_ref_apply(&plan, B, x0, xf, u, xs, fe, en, awork);
    check_status(st, "tl_ref_apply");
    check_inputs();
    if (B < 0 || awork == NULL)
        CHECK(st != TL_OK, "TL_OK for an invalid apply");
    if (st == TL_OK && mod && all_moderate(x0, Ba * n) && all_moderate(xf, Ba * n)) {
        STAT(ST_REF);
        CHECK(all_finite(u, Ba * Ta * m) && all_finite(xs, Ba * (Ta + 1) * n) &&
                  all_finite(fe, Ba) && all_finite(en, Ba),
              "reference outputs not finite");
        for (ptrdiff_t b = 0; b < Ba; b++)
            CHECK(en[b] >= 0.0 && fe[b] >= 0.0, "negative energy or error");
        if (method != TL_REF_CONTINUOUS)
            for (ptrdiff_t b = 0; b < Ba; b++)
                for (ptrdiff_t i = 0; i < n; i++)
                    CHECK(xs[b * (Ta + 1) * n + i] == x0[b * n + i], "states[0] != x0");
        for (ptrdiff_t b = 0; b < Ba; b++) {
            double e = 0.0;
            for (ptrdiff_t i = 0; i < Ta * m; i++)
                e += u[b * Ta * m + i] * u[b * Ta * m + i];
            e *= plan.dt;
            CHECK(fabs(en[b] - e) <= 1e-13 * e + 1e-300, "energy[%td] = %.17g, sum |u|^2 dt "
                  "%.17g", b, en[b], e);
        }
        if (method == TL_REF_EXACT)
            check_exact_reference(&s, per_sample ? sample : 0, &plan, Ba, x0, xf, u, xs, fe);
    }
}

static void fuzz_gramian(reader *r)
{
    const ptrdiff_t n = rd_size(r, MAXN, 0), m = rd_size(r, MAXN, 0);
    const double t = rd_double(r);
    const size_t bytes = tl_gramian_work_bytes(n);
    note("gramian n=%td m=%td t=%.17g ", n, m, t);
    if (!dim_callable(n) || !dim_callable(m))
        return;
    const ptrdiff_t na = clampsz(n, MAXN), ma = clampsz(m, MAXN);
    double *A = dvals(r, na * na), *B = dvals(r, na * ma), *W = dout(na * na);
    void *work = rd_u8(r) % 16 == 0 ? NULL : xalloc(bytes);
    watch_input(A, (size_t)(na * na) * sizeof(double), "A");
    watch_input(B, (size_t)(na * ma) * sizeof(double), "B");
    tl_status st = tl_gramian(n, m, A, B, t, W, work);
    check_status(st, "tl_gramian");
    check_inputs();
    if (!dim_valid(n) || !dim_valid(m) || work == NULL || !(t >= 0.0) || !isfinite(t))
        CHECK(st != TL_OK, "TL_OK for an invalid call");
    if (st != TL_OK || !moderate(t) || !all_moderate(A, na * na) || !all_moderate(B, na * ma))
        return;
    const double bb = norm1(na, ma, B) * norm1(ma, na, B) + 1.0;
    if (t * (2.0 * norm1(na, na, A) + bb) > 50.0)
        return;
    STAT(ST_GRAM);
    CHECK(all_finite(W, na * na), "gramian not finite");
    for (ptrdiff_t i = 0; i < na; i++) {
        CHECK(W[i * na + i] >= -1e-9 * (1.0 + max_abs(W, na * na)), "gramian diagonal < 0");
        for (ptrdiff_t j = 0; j < i; j++)
            CHECK(fabs(W[i * na + j] - W[j * na + i]) <= 1e-12 * max_abs(W, na * na),
                  "gramian not symmetric");
    }
}

static void fuzz_min_energy_law(reader *r)
{
    const ptrdiff_t n = rd_size(r, 4, 0), m = rd_size(r, 4, 0);
    const ptrdiff_t B = rd_size(r, 3, 1), Q = rd_size(r, 4, 1);
    const double H = rd_double(r);
    const size_t bytes = tl_min_energy_law_work_bytes(n, m);
    note("min_energy_law n=%td m=%td B=%td ntimes=%td horizon=%.17g ", n, m, B, Q, H);
    if (!dim_callable(n) || !dim_callable(m))
        return;
    const ptrdiff_t na = clampsz(n, 4), ma = clampsz(m, 4), Ba = clampsz(B, 3), Qa = clampsz(Q, 4);
    double *A = dvals(r, na * na), *Bm = dvals(r, na * ma);
    double *x0 = dvals(r, Ba * na), *xf = dvals(r, Ba * na), *times = dalloc(Qa);
    for (ptrdiff_t q = 0; q < Qa; q++) {
        const unsigned c = rd_u8(r);
        times[q] = c < 200 ? H * (double)(c % 11) / 10.0 : rd_double(r);
    }
    note("A=[");
    for (ptrdiff_t i = 0; i < na * na; i++)
        note("%s%.17g", i ? "," : "", A[i]);
    note("] B=[");
    for (ptrdiff_t i = 0; i < na * ma; i++)
        note("%s%.17g", i ? "," : "", Bm[i]);
    note("] times=[");
    for (ptrdiff_t q = 0; q < Qa; q++)
        note("%s%.17g", q ? "," : "", times[q]);
    note("] ");
    double *u = dout(Ba * Qa * ma), *x = dout(Ba * Qa * na);
    tl_law_info info = {-1.0, -1.0, -1};
    void *work = rd_u8(r) % 16 == 0 ? NULL : xalloc(bytes);
    watch_input(A, (size_t)(na * na) * sizeof(double), "A");
    watch_input(Bm, (size_t)(na * ma) * sizeof(double), "B");
    watch_input(x0, (size_t)(Ba * na) * sizeof(double), "x0");
    watch_input(xf, (size_t)(Ba * na) * sizeof(double), "xf");
    watch_input(times, (size_t)Qa * sizeof(double), "times");
    tl_status st = tl_min_energy_law(n, m, A, Bm, H, B, x0, xf, Q, times, u, x, &info, work);
    check_status(st, "tl_min_energy_law");
    check_inputs();
    note("cond=%.6g growth=%.6g backward=%d ", info.cond, info.growth, info.backward);
    if (!dim_valid(n) || !dim_valid(m) || B < 0 || Q < 0 || work == NULL || !isfinite(H) ||
        !(H > 0.0))
        CHECK(st != TL_OK, "TL_OK for an invalid call");
    /* refused: an ill-conditioned Gramian of the direction used, or e^{At} growing past
     * the limit in it (then the Gramian may not have been looked at) */
    if (st == TL_ERR_SINGULAR)
        CHECK(!(info.cond <= TL_COND_LIMIT) || !(info.growth <= TL_LAW_GROWTH_LIMIT),
              "TL_ERR_SINGULAR with cond %g, growth %g", info.cond, info.growth);
    if (st != TL_OK)
        return;
    CHECK(info.cond <= TL_COND_LIMIT && info.cond >= 1.0 - 64 * DBL_EPSILON,
          "TL_OK with cond %g", info.cond);
    /* growth may be 0: e^{AH} of a hugely negative A underflows */
    CHECK(info.growth <= TL_LAW_GROWTH_LIMIT && info.growth >= 0.0, "TL_OK with growth %g",
          info.growth);
    CHECK(info.backward == 0 || info.backward == 1, "backward = %d", info.backward);
    /* forward, W_c(0) = 0 and e^{A 0} = I: x(0) is x0 itself; backward, x(H) is xf --
     * where the multiplier W_c(0) multiplies is finite (moderate data; a NaN or inf
     * in x0 or xf, or an overflowing W_c(H)^-1, gives 0 inf) */
    const int mod_sys = moderate(H) && all_moderate(A, na * na) && all_moderate(Bm, na * ma);
    for (ptrdiff_t q = 0; q < Qa && mod_sys; q++) {
        const double *end = info.backward ? xf : x0;
        if (times[q] != (info.backward ? H : 0.0))
            continue;
        STAT(ST_LAW_END);
        for (ptrdiff_t b = 0; b < Ba; b++)
            for (ptrdiff_t i = 0; i < na && all_moderate(x0 + b * na, na) &&
                                  all_moderate(xf + b * na, na); i++)
                CHECK(x[(b * Qa + q) * na + i] == end[b * na + i], "x[%td] at t = %g is %.17g, "
                      "not the %s %.17g", b, times[q], x[(b * Qa + q) * na + i],
                      info.backward ? "target" : "start", end[b * na + i]);
    }
    if (!moderate(H) || !all_moderate(A, na * na) || !all_moderate(Bm, na * ma) ||
        !all_moderate(x0, Ba * na) || !all_moderate(xf, Ba * na))
        return;
    const double bb = norm1(na, ma, Bm) * norm1(ma, na, Bm) + 1.0;
    if (H * (2.0 * norm1(na, na, A) + bb) > 50.0)
        return;
    STAT(ST_LAW);
    CHECK(all_finite(u, Ba * Qa * ma) && all_finite(x, Ba * Qa * na), "law outputs not finite");
}

/*
 * Huge sizes: every size query with sizes near the addressable limit must
 * either say 0 or a number of bytes the call then stays within. Calls are made
 * with batch 0 (so no batch-sized array is needed) when the scratch is small
 * enough to allocate -- a size computation that wrapped around says so.
 */
static void fuzz_huge_sizes(reader *r)
{
    const unsigned which = rd_u8(r) % 8;
    static const ptrdiff_t big[] = {((ptrdiff_t)1 << 61) - 1, (ptrdiff_t)1 << 61,
                                    ((ptrdiff_t)1 << 61) + 1, ((ptrdiff_t)1 << 62) - 1,
                                    (ptrdiff_t)1 << 62, PTRDIFF_MAX, PTRDIFF_MAX - 1,
                                    (ptrdiff_t)1 << 59, ((ptrdiff_t)1 << 60) - 2,
                                    ((ptrdiff_t)1 << 31) - 1, (ptrdiff_t)1 << 32,
                                    (ptrdiff_t)3 << 60, 3074457345618258602 /* ~2^63/3 */,
                                    2305843009213693951, 1537228672809129301 /* ~2^63/6 */, 40};
    const ptrdiff_t T = big[rd_u8(r) % 16];
    const ptrdiff_t n = rd_size(r, MAXN, 0), m = rd_size(r, MAXN, 0);
    note("huge-size query %u: steps=%td n=%td m=%td ", which, T, n, m);
    tl_loss_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.sel.batch = 0, spec.sel.steps = T, spec.sel.discount = 1.0;
    spec.penalty = TL_PENALTY_MSE, spec.terms = 7, spec.control_weight = 1.0;
    if (which == 7) { /* every query must be free of undefined behaviour for any arguments */
        (void)tl_expm_work_bytes(T), (void)tl_expm_work_bytes(n);
        (void)tl_discretize_work_bytes(n, m), (void)tl_rollout_work_bytes(n, m);
        (void)tl_time_weights_work_bytes(T), (void)tl_gramian_work_bytes(n);
        (void)tl_ref_apply_work_bytes(n, m), (void)tl_min_energy_law_work_bytes(n, m);
        (void)tl_min_energy_work_bytes(n, m, T, TL_REF_EXACT);
        (void)tl_ref_plan_bytes(n, m, T, TL_REF_CONTINUOUS);
        (void)tl_ref_init_work_bytes(n, m, T, TL_REF_CONTINUOUS);
        const tl_dynamics dq = tl_dynamics_linear(n, m, NULL, NULL);
        (void)tl_loss_work_bytes(NULL, n, &spec), (void)tl_loss_work_bytes(&dq, 0, &spec);
        STAT(ST_HUGE);
        return;
    }
    if (!dim_callable(n) || !dim_callable(m))
        return;
    const ptrdiff_t na = clampsz(n, MAXN), ma = clampsz(m, MAXN);
    double *Ad = dvals(r, na * na), *Bd = dvals(r, na * ma);
    const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
    tl_status st = TL_OK;
    size_t bytes;
    switch (which) {
    case 0: { /* time weights of an empty batch over T steps */
        tl_selection sel = {0, T, NULL, NULL, 0.5};
        bytes = tl_time_weights_work_bytes(T);
        note("work=%zu ", bytes);
        if (bytes > WORK_CAP)
            return;
        double w_unused;
        st = tl_time_weights(&sel, &w_unused, xalloc(bytes));
        break;
    }
    case 1: /* rollout of an empty batch */
        bytes = tl_rollout_work_bytes(n, m);
        if (bytes > WORK_CAP)
            return;
        st = tl_rollout(&sys, TL_F64, 0, T, NULL, NULL, NULL, xalloc(bytes));
        break;
    case 2: { /* the plan: its memory and scratch grow with the steps */
        const tl_ref_method method = (tl_ref_method)(rd_u8(r) % 3);
        const size_t pb = tl_ref_plan_bytes(n, m, T, method);
        bytes = tl_ref_init_work_bytes(n, m, T, method);
        note("plan=%zu work=%zu ", pb, bytes);
        if (pb > WORK_CAP || bytes > WORK_CAP)
            return;
        tl_ref_plan plan;
        st = tl_ref_plan_init(&plan, xalloc(pb), method, &sys, 0, Ad, Bd, 0.25, T,
                              xalloc(bytes));
        break;
    }
    case 3: { /* control loss of an empty batch */
        bytes = tl_loss_work_bytes(NULL, n, &spec);
        note("work=%zu ", bytes);
        if (bytes > WORK_CAP)
            return;
        tl_loss_value v;
        const tl_loss_io io = {TL_F64, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        st = tl_control_loss(&spec, n, &io, &v, xalloc(bytes));
        break;
    }
    case 4: { /* rollout loss of an empty batch */
        bytes = tl_loss_work_bytes(&sys, 0, &spec);
        note("work=%zu ", bytes);
        if (bytes > WORK_CAP)
            return;
        tl_loss_value v;
        const tl_loss_io io = {TL_F64, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        st = tl_rollout_loss(&sys, &spec, &io, &v, xalloc(bytes));
        break;
    }
    case 5: { /* expm of a huge n must be refused, not attempted */
        bytes = tl_expm_work_bytes(T);
        note("work=%zu ", bytes);
        if (bytes == 0) {
            double a;
            st = tl_expm(T, &a, &a, xalloc(1), NULL);
            CHECK(st != TL_OK, "expm with n=%td accepted", T);
        }
        return;
    }
    default: { /* the law at many times for an empty batch */
        bytes = tl_min_energy_law_work_bytes(n, m);
        if (bytes > WORK_CAP)
            return;
        tl_law_info info;
        st = tl_min_energy_law(n, m, Ad, Bd, 1.0, 0, NULL, NULL, 0, NULL, NULL, NULL, &info,
                               xalloc(bytes));
        break;
    }
    }
    STAT(ST_HUGE), check_status(st, "huge-size call");
}

/*
 * tl_dynamics_check against the rule written out: sizes in range (else
 * TL_ERR_SHAPE), A and B given, reserved slots empty, strides >= 0 (else
 * TL_ERR_VALUE), and each field that varies covers the call's batch or steps
 * (else TL_ERR_SHAPE); and tl_selection_check likewise.
 */
static void fuzz_checks(reader *r)
{
    const int code = (int)(int8_t)rd_u8(r);
    note("checks status=%d ", code);
    CHECK(tl_status_message((tl_status)code) != NULL, "NULL message for %d", code);
    fz_system s;
    read_system(r, &s);
    double dummy[1] = {0.0};
    tl_dynamics d = tl_dynamics_linear(s.n, s.m, rd_u8(r) % 8 ? s.Ad : NULL, s.Bd);
    const ptrdiff_t batch = rd_size(r, MAXB, 1), steps = rd_size(r, MAXT, 1);
    const unsigned f1 = rd_u8(r), f2 = rd_u8(r);
    static const ptrdiff_t strides[] = {0, 0, 0, 4, 1, 36, -1, PTRDIFF_MIN};
    tl_field *fields[3] = {&d.A, &d.B, &d.c};
    if (f1 & 1)
        d.c.data = dummy;
    for (int f = 0; f < 3; f++) {
        fields[f]->batch_stride = strides[(f1 >> (1 + f)) % 8];
        fields[f]->step_stride = strides[(f2 >> f) % 8];
    }
    static const ptrdiff_t claims[] = {0, 1, 2, 3, 8, 40, -1, PTRDIFF_MAX};
    d.batch = f1 & 16 ? batch : claims[(f1 >> 5) % 8];
    d.steps = f2 & 8 ? steps : claims[(f2 >> 4) % 8];
    if (f2 & 128) { /* a reserved slot or the kind */
        const unsigned which = rd_u8(r) % 6;
        if (which == 0)
            d.step = (tl_step_fn)(uintptr_t)16;
        else if (which == 1)
            d.jacobians = (tl_jacobian_fn)(uintptr_t)16;
        else if (which == 2)
            d.param_jacobian = (tl_param_jacobian_fn)(uintptr_t)16;
        else if (which == 3)
            d.params.data = dummy;
        else if (which == 4)
            d.nparams = 2;
        else
            d.kind = (tl_dyn_kind)(rd_u8(r) % 2 ? TL_DYN_COUNT : -1);
    }
    note("batch=%td steps=%td dyn.batch=%td dyn.steps=%td strides A (%td, %td) B (%td, %td) "
         "c %s (%td, %td) ", batch, steps, d.batch, d.steps, d.A.batch_stride, d.A.step_stride,
         d.B.batch_stride, d.B.step_stride, d.c.data ? "given" : "absent", d.c.batch_stride,
         d.c.step_stride);
    /* the faults, each with its status */
    const int slots = d.step != NULL || d.jacobians != NULL || d.param_jacobian != NULL ||
                      d.params.data != NULL || d.nparams != 0;
    int strides_ok = 1, fits = 1;
    for (int f = 0; f < 3; f++) {
        strides_ok &= fields[f]->batch_stride >= 0 && fields[f]->step_stride >= 0;
        if (fields[f]->data != NULL)
            fits &= (fields[f]->batch_stride == 0 || d.batch == batch) &&
                    (fields[f]->step_stride == 0 || d.steps == steps);
    }
    const int faults[3] = {(int)d.kind < 0 || d.kind >= TL_DYN_COUNT || d.A.data == NULL ||
                               slots || !strides_ok, /* TL_ERR_VALUE */
                           !s.valid || d.batch < 0 || d.steps < 0 || batch < 0 || steps < 0,
                           !fits}; /* TL_ERR_SHAPE */
    const int any = faults[0] || faults[1] || faults[2];
    const tl_status st = tl_dynamics_check(&d, batch, steps);
    check_status(st, "tl_dynamics_check");
    CHECK((st == TL_OK) == !any, "tl_dynamics_check = %d with faults (value %d, size %d, fit %d)",
          (int)st, faults[0], faults[1], faults[2]);
    /* one kind of fault: its status (with several, the core reports any one) */
    if (faults[0] && !faults[1] && !faults[2])
        CHECK(st == TL_ERR_VALUE, "tl_dynamics_check = %d, not TL_ERR_VALUE", (int)st);
    if (!faults[0] && (faults[1] || faults[2]))
        CHECK(st == TL_ERR_SHAPE, "tl_dynamics_check = %d, not TL_ERR_SHAPE", (int)st);
    CHECK(tl_dynamics_check(NULL, 1, 1) != TL_OK, "tl_dynamics_check(NULL) accepted");
    fz_sel z;
    read_selection(r, &z, 0);
    if (!z.callable)
        return;
    const tl_status ss = tl_selection_check(&z.sel);
    check_status(ss, "tl_selection_check");
    CHECK((ss == TL_OK) == z.valid, "tl_selection_check = %d, expected %s", (int)ss,
          z.valid ? "TL_OK" : "an error");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *v = getenv("FUZZ_CORE_VERBOSE");
    verbose = v != NULL && *v != '\0' && *v != '0';
    v = getenv("FUZZ_CORE_STATS");
    print_stats = v != NULL && *v != '\0' && *v != '0';
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    desc_len = 0, desc[0] = '\0', nwatch = 0;
    switch (rd_u8(&r) % 20) {
    case 0: fuzz_expm(&r); break;
    case 1: fuzz_discretize(&r); break;
    case 2: fuzz_rollout(&r, 0, 0); break;
    case 3: fuzz_rollout(&r, 1, 0); break;
    case 4: fuzz_rollout(&r, 0, 1); break;
    case 5: fuzz_rollout(&r, 1, 1); break;
    case 6: fuzz_final_state_error(&r, 0); break;
    case 7: fuzz_final_state_error(&r, 1); break;
    case 8: fuzz_time_weights(&r); break;
    case 9: fuzz_control_loss(&r, 0); break;
    case 10: fuzz_control_loss(&r, 1); break;
    case 11: case 12: fuzz_rollout_loss(&r, 0); break;
    case 13: case 14: fuzz_rollout_loss(&r, 1); break;
    case 15: fuzz_references(&r); break;
    case 16: fuzz_gramian(&r); break;
    case 17: fuzz_min_energy_law(&r); break;
    case 18: fuzz_huge_sizes(&r); break;
    default: fuzz_checks(&r); break;
    }
    if (verbose)
        fputs("\n", stderr);
    if (print_stats && ++inputs % 1000 == 0)
        dump_stats();
    free_all();
    return 0;
}
