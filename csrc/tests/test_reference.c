/*
 * test_reference.c -- C tests of the minimum-energy references (reference.c)
 * over every linear form of tl_dynamics, against closed forms and plain
 * loops written here: the controllability matrix built explicitly, the
 * least-norm controls by the normal equations (Gaussian elimination), the
 * rollout step by step. Prints one line per failure and "N passed, N failed".
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trajloss.h"

#include "check.h"




/* ---- plain references ---------------------------------------------------- */

/* C (r x c) = A (r x k) B (k x c) */
static void mul(int r, int k, int c, const double *A, const double *B, double *C)
{
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) {
            double acc = 0.0;
            for (int l = 0; l < k; l++)
                acc += A[i * k + l] * B[l * c + j];
            C[i * c + j] = acc;
        }
}

/* Solve W x = d (n x n, W overwritten) by Gaussian elimination with partial
 * pivoting; d becomes x. */
static void solve(int n, double *W, double *d)
{
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(W[r * n + c]) > fabs(W[p * n + c]))
                p = r;
        for (int j = 0; j < n; j++) {
            double t = W[c * n + j];
            W[c * n + j] = W[p * n + j], W[p * n + j] = t;
        }
        double t = d[c];
        d[c] = d[p], d[p] = t;
        for (int r = c + 1; r < n; r++) {
            const double f = W[r * n + c] / W[c * n + c];
            for (int j = c; j < n; j++)
                W[r * n + j] -= f * W[c * n + j];
            d[r] -= f * d[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double acc = d[r];
        for (int j = r + 1; j < n; j++)
            acc -= W[r * n + j] * d[j];
        d[r] = acc / W[r * n + r];
    }
}

/* A system of any linear form with its own arrays (strides as in trajloss.h). */
typedef struct {
    int n, m, T, B;
    int per[3], tv[3]; /* A, B, c: per-sample, time-varying */
    int offset;
    double *data[3];
    tl_dynamics dyn;
} test_system;

/* Sample b's matrix f (0 A, 1 B, 2 c) at step k, read with plain indexing. */
static const double *mat(const test_system *s, int f, int b, int k)
{
    const int size = f == 0 ? s->n * s->n : f == 1 ? s->n * s->m : s->n;
    const int steps = s->tv[f] ? s->T : 1;
    return s->data[f] + ((s->per[f] ? b : 0) * steps + (s->tv[f] ? k : 0)) * size;
}

/* Random, well-conditioned: A = 0.9 I + 0.3 noise (different at each sample
 * and step when those vary), B noise, c noise. */
static void make_system(test_system *s, int n, int m, int T, int B, const int per[3],
                        const int tv[3], int offset, unsigned *seed)
{
    memset(s, 0, sizeof *s);
    s->n = n, s->m = m, s->T = T, s->B = B, s->offset = offset;
    const int size[3] = {n * n, n * m, n};
    s->dyn = tl_dynamics_linear(n, m, NULL, NULL);
    tl_field *fields[3] = {&s->dyn.A, &s->dyn.B, &s->dyn.c};
    for (int f = 0; f < 3; f++) {
        s->per[f] = per[f], s->tv[f] = tv[f];
        if (f == 2 && !offset)
            continue;
        const int count = (per[f] ? B : 1) * (tv[f] ? T : 1);
        s->data[f] = xmalloc(sizeof(double) * count * size[f]);
        for (int q = 0; q < count; q++)
            for (int i = 0; i < size[f]; i++)
                s->data[f][q * size[f] + i] =
                    (f == 0 ? 0.3 : 1.0) * uniform(seed) + (f == 0 && i % (n + 1) == 0 ? 0.9 : 0.0);
        fields[f]->data = s->data[f];
        fields[f]->step_stride = tv[f] ? size[f] : 0;
        fields[f]->batch_stride = per[f] ? (tv[f] ? T : 1) * size[f] : 0;
    }
    s->dyn.batch = (per[0] || per[1] || (offset && per[2])) ? B : 0;
    s->dyn.steps = (tv[0] || tv[1] || (offset && tv[2])) ? T : 0;
}

static void free_system(test_system *s)
{
    for (int f = 0; f < 3; f++)
        free(s->data[f]);
}

/* The 1-norm condition number of the n x n W, its inverse by n solves. */
static double cond1(int n, const double *W)
{
    double *V = xmalloc(sizeof(double) * n * n), *e = xmalloc(sizeof(double) * n);
    double norm = 0.0, inorm = 0.0;
    for (int j = 0; j < n; j++) {
        double col = 0.0, icol = 0.0;
        memcpy(V, W, sizeof(double) * n * n);
        memset(e, 0, sizeof(double) * n);
        e[j] = 1.0;
        solve(n, V, e);
        for (int i = 0; i < n; i++)
            col += fabs(W[i * n + j]), icol += fabs(e[i]);
        norm = fmax(norm, col), inorm = fmax(inorm, icol);
    }
    free(V), free(e);
    return norm * inorm;
}

/* Sample b's least-norm controls U = C^T (C C^T)^-1 d, C built block by
 * block as Phi(T, k+1) B_k with Phi(T, j) = A_{T-1} ... A_j multiplied out
 * afresh for each block, d = xf - Phi(T, 0) x0 - sum_k Phi(T, k+1) c_k.
 * Returns cond_1(C C^T): the normal equations lose that factor of eps. */
static double naive_controls(const test_system *s, int b, const double *x0, const double *xf,
                             double *U)
{
    const int n = s->n, m = s->m, T = s->T, N = T * m;
    double *C = xmalloc(sizeof(double) * n * N), *Phi = xmalloc(sizeof(double) * n * n);
    double *tmp = xmalloc(sizeof(double) * n * n), *blk = xmalloc(sizeof(double) * n * m);
    double *W = xmalloc(sizeof(double) * n * n), *d = xmalloc(sizeof(double) * n);
    memcpy(d, xf, sizeof(double) * n);
    for (int k = -1; k < T; k++) { /* Phi(T, k+1); k = -1 gives Phi(T, 0) */
        memset(Phi, 0, sizeof(double) * n * n);
        for (int i = 0; i < n; i++)
            Phi[i * n + i] = 1.0;
        for (int j = T - 1; j >= k + 1; j--) {
            mul(n, n, n, Phi, mat(s, 0, b, j), tmp);
            memcpy(Phi, tmp, sizeof(double) * n * n);
        }
        if (k < 0) {
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    d[i] -= Phi[i * n + j] * x0[j];
            continue;
        }
        mul(n, n, m, Phi, mat(s, 1, b, k), blk);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < m; c++)
                C[i * N + k * m + c] = blk[i * m + c];
        if (s->offset)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    d[i] -= Phi[i * n + j] * mat(s, 2, b, k)[j];
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0.0;
            for (int r = 0; r < N; r++)
                acc += C[i * N + r] * C[j * N + r];
            W[i * n + j] = acc;
        }
    const double cond = cond1(n, W);
    solve(n, W, d);
    for (int r = 0; r < N; r++) {
        double acc = 0.0;
        for (int i = 0; i < n; i++)
            acc += C[i * N + r] * d[i];
        U[r] = acc;
    }
    free(C), free(Phi), free(tmp), free(blk), free(W), free(d);
    return cond;
}

/* Sample b's rollout x (T+1 x n) of controls U, step by step. */
static void naive_rollout(const test_system *s, int b, const double *x0, const double *U,
                          double *x)
{
    const int n = s->n, m = s->m;
    memcpy(x, x0, sizeof(double) * n);
    for (int k = 0; k < s->T; k++)
        for (int i = 0; i < n; i++) {
            double acc = s->offset ? mat(s, 2, b, k)[i] : 0.0;
            for (int j = 0; j < n; j++)
                acc += mat(s, 0, b, k)[i * n + j] * x[k * n + j];
            for (int j = 0; j < m; j++)
                acc += mat(s, 1, b, k)[i * m + j] * U[k * m + j];
            x[(k + 1) * n + i] = acc;
        }
}

/* max |a - b| / max(1, max |b|) */
static double rel_err(ptrdiff_t count, const double *a, const double *b)
{
    double diff = 0.0, scale = 1.0;
    for (ptrdiff_t i = 0; i < count; i++) {
        diff = fmax(diff, fabs(a[i] - b[i]));
        scale = fmax(scale, fabs(b[i]));
    }
    return diff / scale;
}

/* references of a whole batch through tl_min_energy (exact), dt = 0.5 shared */
static tl_status run_exact(const test_system *s, const double *x0, const double *xf, double *U,
                           double *X, double *err, double *energy, tl_ref_info *info)
{
    const double dt = 0.5;
    tl_ref_model model = {{&dt, 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    void *work = xmalloc(tl_min_energy_work_bytes(s->n, s->m, s->T, TL_REF_EXACT));
    tl_status status = tl_min_energy(TL_REF_EXACT, &s->dyn, &model, s->T, s->B, x0, xf, U, X,
                                     err, energy, info, work, NULL);
    free(work);
    return status;
}

/* ---- every linear form, exact -------------------------------------------- */

static double worst_forms_controls, worst_forms_reach;

static void check_form(int n, int m, int T, int B, const int per[3], const int tv[3], int offset,
                       unsigned *seed)
{
    test_system s;
    make_system(&s, n, m, T, B, per, tv, offset, seed);
    const int su = T * m, ss = (T + 1) * n;
    double *x0 = xmalloc(sizeof(double) * B * n), *xf = xmalloc(sizeof(double) * B * n);
    double *U = xmalloc(sizeof(double) * B * su), *X = xmalloc(sizeof(double) * B * ss);
    double *err = xmalloc(sizeof(double) * B), *energy = xmalloc(sizeof(double) * B);
    double *Un = xmalloc(sizeof(double) * su), *Xn = xmalloc(sizeof(double) * ss);
    for (int i = 0; i < B * n; i++)
        x0[i] = 3 * uniform(seed), xf[i] = uniform(seed);
    tl_ref_info info;
    tl_status status = run_exact(&s, x0, xf, U, X, err, energy, &info);
    CHECK(status == TL_OK, "form n%d m%d T%d per %d%d%d tv %d%d%d c%d: status %d", n, m, T, per[0],
          per[1], per[2], tv[0], tv[1], tv[2], offset, (int)status);
    const int per_sample = per[0] || per[1] || (offset && per[2]);
    CHECK(info.plans == (per_sample ? B : 1), "plans %td", info.plans);
    /* controls within the normal equations' own error, eps cond(C C^T) */
    double wu = 0.0, wx = 0.0, we = 0.0, wr = 0.0, slack = 0.0;
    for (int b = 0; b < B && status == TL_OK; b++) {
        const double cond = naive_controls(&s, b, x0 + b * n, xf + b * n, Un);
        const double e_u = rel_err(su, U + b * su, Un);
        wu = fmax(wu, e_u);
        slack = fmax(slack, e_u / (1e-12 + 1e-14 * cond));
        naive_rollout(&s, b, x0 + b * n, U + b * su, Xn);
        wx = fmax(wx, rel_err(ss, X + b * ss, Xn));
        double scale = 1.0, miss = 0.0, e = 0.0;
        for (int i = 0; i < ss; i++)
            scale = fmax(scale, fabs(Xn[i]));
        for (int i = 0; i < n; i++)
            miss += (Xn[T * n + i] - xf[b * n + i]) * (Xn[T * n + i] - xf[b * n + i]);
        wr = fmax(wr, sqrt(miss) / scale);
        for (int i = 0; i < su; i++)
            e += U[b * su + i] * U[b * su + i];
        we = fmax(we, fabs(energy[b] - 0.5 * e) / (1.0 + e) +
                          fabs(err[b] - sqrt(miss)) / scale);
    }
    CHECK(slack < 1.0, "form n%d m%d T%d per %d%d%d tv %d%d%d c%d: controls vs normal equations "
          "%g, %g of eps cond(C C^T)", n, m, T, per[0], per[1], per[2], tv[0], tv[1], tv[2],
          offset, wu, slack);
    CHECK(wx < 1e-12, "form: states vs a plain rollout %g", wx);
    CHECK(wr < 1e-10, "form per %d%d%d tv %d%d%d c%d: x_T misses xf by %g of the state scale",
          per[0], per[1], per[2], tv[0], tv[1], tv[2], offset, wr);
    CHECK(we < 1e-12, "form: energy and final_error %g", we);
    worst_forms_controls = fmax(worst_forms_controls, wu);
    worst_forms_reach = fmax(worst_forms_reach, wr);
    free(x0), free(xf), free(U), free(X), free(err), free(energy), free(Un), free(Xn);
    free_system(&s);
}

static void test_forms(void)
{
    unsigned seed = 2024u;
    const int dims[][3] = {{1, 1, 3}, {2, 1, 6}, {3, 2, 5}, {4, 1, 9}, {5, 3, 4}};
    for (size_t q = 0; q < sizeof dims / sizeof dims[0]; q++)
        for (int mask = 0; mask < 64; mask++) {
            /* bits: per-sample A, B, c; time-varying A, B, c */
            const int per[3] = {mask & 1, (mask >> 1) & 1, (mask >> 2) & 1};
            const int tv[3] = {(mask >> 3) & 1, (mask >> 4) & 1, (mask >> 5) & 1};
            for (int offset = 0; offset < 2; offset++) {
                if (!offset && (per[2] || tv[2]))
                    continue;
                check_form(dims[q][0], dims[q][1], dims[q][2], 11, per, tv, offset, &seed);
            }
        }
    printf("every form: worst controls vs normal equations %.3g, worst reach %.3g\n",
           worst_forms_controls, worst_forms_reach);
}

/* A shared system's batch is bit for bit its samples one call each. */
static void test_shared_batch(void)
{
    unsigned seed = 99u;
    const int per[3] = {0, 0, 0}, tv[3] = {1, 0, 1};
    test_system s;
    make_system(&s, 3, 2, 7, 9, per, tv, 1, &seed);
    const int n = 3, su = 7 * 2, ss = 8 * 3, B = 9;
    double x0[27], xf[27], U[2][9 * 14], X[2][9 * 24], err[2][9], energy[2][9];
    for (int i = 0; i < B * n; i++)
        x0[i] = uniform(&seed), xf[i] = uniform(&seed);
    tl_ref_info info;
    CHECK(run_exact(&s, x0, xf, U[0], X[0], err[0], energy[0], &info) == TL_OK && info.plans == 1,
          "shared batch");
    test_system one = s;
    one.B = 1;
    for (int b = 0; b < B; b++)
        run_exact(&one, x0 + b * n, xf + b * n, U[1] + b * su, X[1] + b * ss, err[1] + b,
                  energy[1] + b, &info);
    CHECK(memcmp(U[0], U[1], sizeof U[0]) == 0 && memcmp(X[0], X[1], sizeof X[0]) == 0 &&
              memcmp(err[0], err[1], sizeof err[0]) == 0 &&
              memcmp(energy[0], energy[1], sizeof energy[0]) == 0,
          "a shared batch is bit for bit its samples one at a time");
    free_system(&s);

    /* average: the same through the plan's own ZOH model */
    const double dt = 0.25, A[4] = {0, 1, -0.5, -0.1}, Bc[2] = {0, 1}, Ad[4] = {1, 0, 0, 1};
    const double Bd[2] = {0, 1}; /* only n and m are read */
    tl_dynamics dyn = tl_dynamics_linear(2, 1, Ad, Bd);
    tl_ref_model model = {{&dt, 0, 0}, {A, 0, 0}, {Bc, 0, 0}};
    void *work = malloc(tl_min_energy_work_bytes(2, 1, 7, TL_REF_AVERAGE));
    double u2[2][9 * 7], x2[2][9 * 16], e2[2][9], en2[2][9];
    tl_min_energy(TL_REF_AVERAGE, &dyn, &model, 7, 9, x0, xf, u2[0], x2[0], e2[0], en2[0], &info,
                  work, NULL);
    for (int b = 0; b < B; b++)
        tl_min_energy(TL_REF_AVERAGE, &dyn, &model, 7, 1, x0 + 2 * b, xf + 2 * b, u2[1] + 7 * b,
                      x2[1] + 16 * b, e2[1] + b, en2[1] + b, &info, work, NULL);
    CHECK(memcmp(u2[0], u2[1], sizeof u2[0]) == 0 && memcmp(x2[0], x2[1], sizeof x2[0]) == 0 &&
              memcmp(e2[0], e2[1], sizeof e2[0]) == 0 &&
              memcmp(en2[0], en2[1], sizeof en2[0]) == 0,
          "an average batch is bit for bit its samples one at a time");
    free(work);
}

/* ---- the double integrator in closed form ------------------------------- */

/* The continuous law u(t) = a + b t from (p0, v0) to the origin over H:
 * v0 + a H + b H^2/2 = 0 and p0 + v0 H + a H^2/2 + b H^3/6 = 0. */
static void di_law(double p0, double v0, double H, double *a, double *b)
{
    const double det = H * H * H * H / 6 - H * H * H * H / 4;
    const double r1 = -v0, r2 = -(p0 + v0 * H);
    *a = (r1 * H * H * H / 6 - H * H / 2 * r2) / det;
    *b = (H * r2 - H * H / 2 * r1) / det;
}

/* average and continuous over a batch whose samples each have their own dt
 * and input gain g (B = [0, g]): per-sample plans from the continuous model,
 * each against the closed form u(t) = (a + b t) / g of its own horizon. */
static void test_per_sample_model(void)
{
    enum { Bn = 4, T = 15 };
    const double dts[Bn] = {1.0 / 3.0, 0.1, 0.25, 0.5}, gains[Bn] = {1.0, 2.0, 0.5, 4.0};
    double A[Bn][4], Bc[Bn][2], Ad[Bn][4], Bd[Bn][2];
    for (int b = 0; b < Bn; b++) {
        const double dt = dts[b], g = gains[b];
        A[b][0] = 0, A[b][1] = 1, A[b][2] = 0, A[b][3] = 0;
        Bc[b][0] = 0, Bc[b][1] = g;
        Ad[b][0] = 1, Ad[b][1] = dt, Ad[b][2] = 0, Ad[b][3] = 1;
        Bd[b][0] = g * dt * dt / 2, Bd[b][1] = g * dt;
    }
    tl_dynamics dyn = tl_dynamics_linear(2, 1, &Ad[0][0], &Bd[0][0]);
    dyn.A.batch_stride = 4, dyn.B.batch_stride = 2, dyn.batch = Bn;
    tl_ref_model model = {{dts, 1, 0}, {&A[0][0], 4, 0}, {&Bc[0][0], 2, 0}};
    double x0[Bn * 2] = {3, 1, -2, 0.5, 1, -1, 0.25, 2}, xf[Bn * 2] = {0};
    double U[Bn * T], X[Bn * (T + 1) * 2], err[Bn], energy[Bn];
    for (int method = TL_REF_AVERAGE; method <= TL_REF_CONTINUOUS; method++) {
        void *work = xmalloc(tl_min_energy_work_bytes(2, 1, T, (tl_ref_method)method));
        tl_ref_info info;
        tl_status status = tl_min_energy((tl_ref_method)method, &dyn, &model, T, Bn, x0, xf, U, X,
                                         err, energy, &info, work, NULL);
        CHECK(status == TL_OK && info.plans == Bn, "per-sample %d status %d plans %td", method,
              (int)status, info.plans);
        double worst = 0.0;
        for (int b = 0; b < Bn; b++) {
            const double dt = dts[b], g = gains[b], H = T * dt;
            const double p0 = x0[2 * b], v0 = x0[2 * b + 1];
            double a, c, e = 0.0;
            di_law(p0, v0, H, &a, &c);
            for (int k = 0; k < T; k++) {
                const double uk = (a + c * (k + 0.5) * dt) / g;
                worst = fmax(worst, fabs(U[b * T + k] - uk));
                e += uk * uk * dt;
            }
            worst = fmax(worst, fabs(energy[b] - e) / e);
            if (method == TL_REF_AVERAGE) /* the ZOH rollout misses by |c| H dt^2 / 12 */
                worst = fmax(worst, fabs(err[b] - fabs(c) * H * dt * dt / 12));
            else
                for (int k = 0; k <= T; k++) { /* the continuous optimum at k dt */
                    const double t = k * dt;
                    const double p = p0 + v0 * t + a * t * t / 2 + c * t * t * t / 6;
                    worst = fmax(worst, fabs(X[(b * (T + 1) + k) * 2] - p));
                }
        }
        CHECK(worst < 1e-11, "per-sample %s vs the closed form: %g",
              method == TL_REF_AVERAGE ? "average" : "continuous", worst);
        free(work);
    }
}

static void test_double_integrator(void)
{
    const ptrdiff_t T = 15;
    const double dt = 1.0 / 3.0, H = T * dt, x0[2] = {3.0, 1.0}, xf[2] = {0.0, 0.0};
    const double A[4] = {0, 1, 0, 0}, Bc[2] = {0, 1}, Ad[4] = {1, dt, 0, 1};
    const double Bd[2] = {dt * dt / 2, dt};
    tl_dynamics dyn = tl_dynamics_linear(2, 1, Ad, Bd);
    tl_ref_model model = {{&dt, 0, 0}, {A, 0, 0}, {Bc, 0, 0}};
    double u[15], S[32], err, energy, a, b;
    di_law(x0[0], x0[1], H, &a, &b);
    void *work = xmalloc(tl_min_energy_work_bytes(2, 1, T, TL_REF_CONTINUOUS));
    tl_ref_info info;
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, T, 1, x0, xf, u, S, &err, &energy, &info,
                        work, NULL) == TL_OK, "exact status");
    CHECK(err < 1e-13 && fabs(S[30]) < 1e-13 && fabs(S[31]) < 1e-13, "exact reaches xf: %g", err);
    CHECK(info.cond > 1.0 && info.cond < 100.0, "equilibrated condition %g", info.cond);
    CHECK(tl_min_energy(TL_REF_AVERAGE, &dyn, &model, T, 1, x0, xf, u, S, &err, &energy, &info,
                        work, NULL) == TL_OK, "average status");
    double worst = 0.0;
    for (ptrdiff_t k = 0; k < T; k++)
        worst = fmax(worst, fabs(u[k] - (a + b * (k + 0.5) * dt)));
    CHECK(worst < 1e-13, "average controls vs a + b t_mid: %g", worst);
    CHECK(fabs(err - fabs(b) * H * dt * dt / 12) < 1e-13, "average error %.17g", err);

    /* uncontrollable: the second state of (I, [1 0]^T) is never reached */
    const double I2[4] = {1, 0, 0, 1}, e1[2] = {1, 0};
    tl_dynamics stuck = tl_dynamics_linear(2, 1, I2, e1);
    tl_ref_plan plan;
    void *mem = xmalloc(tl_ref_plan_bytes(2, 1, 5, TL_REF_EXACT));
    void *iw = xmalloc(tl_ref_init_work_bytes(2, 1, 5, TL_REF_EXACT));
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &stuck, 0, NULL, NULL, 1.0, 5, iw) ==
              TL_ERR_SINGULAR, "second state unreachable");
    /* C = [1 1 1 1 1; 0 0 0 0 0]: rank 1, R_11 = 1 after equilibration */
    CHECK(plan.rank.rank == 1 && fabs(plan.rank.r_first - 1.0) < 1e-15 &&
              plan.rank.r_next == 0.0 && fabs(plan.rank.tol - 5 * DBL_EPSILON) < 1e-30,
          "rank report: rank %td, |R_11| %g, first refused %g, tol %g", plan.rank.rank,
          plan.rank.r_first, plan.rank.r_next, plan.rank.tol);
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_AVERAGE, &stuck, 0, NULL, NULL, 1.0, 5, iw) ==
              TL_ERR_VALUE, "average needs A, B");
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &stuck, 0, NULL, NULL, 1.0, 0, iw) ==
              TL_ERR_SHAPE, "zero steps");
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &stuck, 1, NULL, NULL, 1.0, 5, iw) ==
              TL_ERR_SHAPE, "sample 1 of a shared system");
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, 1, 1, x0, xf, u, S, &err, &energy, &info,
                        work, NULL) == TL_ERR_SINGULAR && info.rank.rank == 1,
          "one step of one input cannot steer two states");

    /* continuous: the states are the continuous optimum on the grid */
    CHECK(tl_min_energy(TL_REF_CONTINUOUS, &dyn, &model, T, 1, x0, xf, u, S, &err, &energy, &info,
                        work, NULL) == TL_OK, "continuous status");
    worst = 0.0;
    for (ptrdiff_t k = 0; k <= T; k++) {
        const double t = k * dt;
        worst = fmax(worst, fabs(S[2 * k] - (x0[0] + x0[1] * t + a * t * t / 2 + b * t * t * t / 6)));
        worst = fmax(worst, fabs(S[2 * k + 1] - (x0[1] + a * t + b * t * t / 2)));
    }
    CHECK(worst < 1e-12, "continuous states vs the closed form: %g", worst);

    /* the law at arbitrary times */
    const double times[3] = {0.0, 1.234, H}, late[1] = {H + 1.0};
    double ul[3], xl[6];
    tl_law_info linfo;
    void *lw = xmalloc(tl_min_energy_law_work_bytes(2, 1));
    CHECK(tl_min_energy_law(2, 1, A, Bc, H, 1, x0, xf, 3, times, ul, xl, &linfo, lw) == TL_OK,
          "law status");
    worst = 0.0;
    for (int q = 0; q < 3; q++) {
        const double t = times[q];
        worst = fmax(worst, fabs(ul[q] - (a + b * t)));
        worst = fmax(worst, fabs(xl[2 * q] - (x0[0] + x0[1] * t + a * t * t / 2 + b * t * t * t / 6)));
        worst = fmax(worst, fabs(xl[2 * q + 1] - (x0[1] + a * t + b * t * t / 2)));
    }
    CHECK(worst < 1e-12, "law vs the closed form: %g", worst);
    CHECK(tl_min_energy_law(2, 1, A, Bc, H, 1, x0, xf, 1, late, ul, xl, &linfo, lw) ==
              TL_ERR_VALUE, "a time past the horizon");
    free(lw);
    free(mem), free(iw), free(work);
}

/* Per-sample plans: the sample whose plan fails is named; a time-varying
 * system has no continuous model; a cancelled batch stops. */
static int always(void *ctx)
{
    (void)ctx;
    return 1;
}

static void test_failures(void)
{
    const double dt = 0.5;
    /* sample 1 of three has B = 0 in the second state */
    double Ad[3][4] = {{1, 0.5, 0, 1}, {1, 0, 0, 1}, {1, 0.5, 0, 1}};
    double Bd[3][2] = {{0.125, 0.5}, {1, 0}, {0.125, 0.5}};
    tl_dynamics dyn = tl_dynamics_linear(2, 1, &Ad[0][0], &Bd[0][0]);
    dyn.A.batch_stride = 4, dyn.B.batch_stride = 2, dyn.batch = 3;
    tl_ref_model model = {{&dt, 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    double x0[6] = {1, 2, 3, 4, 5, 6}, xf[6] = {0}, U[3 * 4], X[3 * 10], err[3], energy[3];
    void *work = xmalloc(tl_min_energy_work_bytes(2, 1, 4, TL_REF_CONTINUOUS));
    tl_ref_info info;
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, 4, 3, x0, xf, U, X, err, energy, &info, work,
                        NULL) == TL_ERR_SINGULAR && info.sample == 1 && info.rank.rank == 1,
          "the failing sample is named: %td (rank %td)", info.sample, info.rank.rank);
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, 4, 2, x0, xf, U, X, err, energy, &info, work,
                        NULL) != TL_OK, "a per-sample system of 3 samples refuses a batch of 2");
    tl_cancel cancel = {always, NULL};
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, 4, 3, x0, xf, U, X, err, energy, &info, work,
                        &cancel) == TL_ERR_INTERRUPTED, "cancelled");

    dyn = tl_dynamics_linear(2, 1, &Ad[0][0], &Bd[0][0]);
    dyn.A.step_stride = 4, dyn.steps = 3; /* Ad[0..2] are three steps */
    const double A[4] = {0, 1, 0, 0}, Bc[2] = {0, 1};
    tl_ref_model cont = {{&dt, 0, 0}, {A, 0, 0}, {Bc, 0, 0}};
    CHECK(tl_min_energy(TL_REF_AVERAGE, &dyn, &cont, 3, 1, x0, xf, U, X, err, energy, &info,
                        work, NULL) == TL_ERR_VALUE, "a time-varying system has no continuous model");
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, 4, 1, x0, xf, U, X, err, energy, &info, work,
                        NULL) != TL_OK, "a time-varying system of 3 steps refuses 4");
    free(work);
}

/* More inputs than states (m > n), scalar closed form:
 * W = sum_j a^2j |b|^2, u_k = a^(T-1-k) b d / W, energy d^2 / W. */
static void test_wide_input(void)
{
    const double a = 0.8, Ad[1] = {a}, Bd[4] = {0.5, -1.0, 0.25, 2.0}, x0[1] = {3.0};
    const double xf[1] = {-1.0}, one = 1.0;
    const ptrdiff_t m = 4, T = 3;
    tl_dynamics dyn = tl_dynamics_linear(1, m, Ad, Bd);
    tl_ref_model model = {{&one, 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    void *work = xmalloc(tl_min_energy_work_bytes(1, m, T, TL_REF_EXACT));
    double u[12], S[4], err = NAN, energy = NAN, bb = 0.0, W = 0.0, worst = 0.0;
    tl_ref_info info;
    CHECK(tl_min_energy(TL_REF_EXACT, &dyn, &model, T, 1, x0, xf, u, S, &err, &energy, &info,
                        work, NULL) == TL_OK, "m > n status");
    for (ptrdiff_t j = 0; j < m; j++)
        bb += Bd[j] * Bd[j];
    for (ptrdiff_t j = 0; j < T; j++)
        W += pow(a, 2.0 * (double)j) * bb;
    const double d = xf[0] - pow(a, (double)T) * x0[0];
    for (ptrdiff_t k = 0; k < T; k++)
        for (ptrdiff_t j = 0; j < m; j++)
            worst = fmax(worst, fabs(u[k * m + j] - pow(a, (double)(T - 1 - k)) * Bd[j] * d / W));
    CHECK(worst < 1e-14, "m > n controls vs closed form: %g", worst);
    CHECK(err < 1e-13 && fabs(S[T] - xf[0]) < 1e-13, "m > n reaches xf: %g", err);
    CHECK(fabs(energy - d * d / W) < 1e-13 * (d * d / W), "m > n energy");
    free(work);
}

/* A chain of 8 integrators, whose C spans dt^8 / 8! to dt: the rollout,
 * done here, reaches xf to 1e-10 of the state scale. */
static void test_chain(void)
{
    enum { n = 8 };
    const double dts[3] = {0.25, 0.5, 1.0};
    const int Ts[2] = {24, 60};
    unsigned seed = 4242u;
    double worst = 0.0;
    for (int q = 0; q < 6; q++) {
        const double dt = dts[q % 3];
        const int T = Ts[q / 3];
        double Ad[n * n] = {0}, Bd[n], fact = 1.0;
        for (int k = 0; k <= n; k++) {
            if (k > 0)
                fact *= k;
            for (int i = 0; i + k < n; i++)
                Ad[i * n + i + k] = pow(dt, k) / fact;
            if (k >= 1)
                Bd[n - k] = pow(dt, k) / fact;
        }
        test_system s;
        memset(&s, 0, sizeof s);
        s.n = n, s.m = 1, s.T = T, s.B = 1, s.data[0] = Ad, s.data[1] = Bd;
        s.dyn = tl_dynamics_linear(n, 1, Ad, Bd);
        double x0[n], xf[n], u[60], S[61 * n], x[61 * n], err, energy, scale = 1.0, miss = 0.0;
        for (int i = 0; i < n; i++)
            x0[i] = uniform(&seed), xf[i] = uniform(&seed);
        tl_ref_info info;
        CHECK(run_exact(&s, x0, xf, u, S, &err, &energy, &info) == TL_OK && info.rank.rank == n,
              "chain of 8, dt %g T %d", dt, T);
        naive_rollout(&s, 0, x0, u, x);
        for (int i = 0; i < (T + 1) * n; i++)
            scale = fmax(scale, fabs(x[i]));
        for (int i = 0; i < n; i++)
            miss = fmax(miss, fabs(x[T * n + i] - xf[i]));
        worst = fmax(worst, miss / scale);
    }
    CHECK(worst < 1e-10, "chain of 8 reaches xf: %g of the state scale", worst);
    printf("chain of 8 integrators: worst reach %.3g\n", worst);
}

/* Plans and scratch for steps they cannot address: the queries say 0 and
 * the plan is refused with TL_ERR_SHAPE before anything is written. */
static void test_huge(void)
{
    const size_t max_doubles = SIZE_MAX / sizeof(double);
    /* n = m = 1, exact: AdT, drift, S, L and T controls */
    const ptrdiff_t last_ok = (ptrdiff_t)(max_doubles - 4);
    CHECK(tl_ref_plan_bytes(1, 1, last_ok, TL_REF_EXACT) == max_doubles * sizeof(double),
          "largest addressable plan");
    CHECK(tl_ref_plan_bytes(1, 1, last_ok + 1, TL_REF_EXACT) == 0, "plan one step too long");
    const double Ad[4] = {1, 0.5, 0, 1}, Bd[4] = {0.125, 0, 0.5, 1};
    const struct {
        ptrdiff_t n, m, steps;
    } cases[] = {{1, 1, PTRDIFF_MAX}, {2, 2, (ptrdiff_t)1 << 62}, {2, 1, (ptrdiff_t)1 << 61},
                 {1, 2, PTRDIFF_MAX / 2}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ptrdiff_t n = cases[i].n, m = cases[i].m, T = cases[i].steps;
        tl_dynamics dyn = tl_dynamics_linear(n, m, Ad, Bd);
        for (int method = 0; method < TL_REF_COUNT; method++) {
            CHECK(tl_ref_plan_bytes(n, m, T, (tl_ref_method)method) == 0 &&
                      tl_ref_init_work_bytes(n, m, T, (tl_ref_method)method) == 0 &&
                      tl_min_energy_work_bytes(n, m, T, (tl_ref_method)method) == 0,
                  "sizes of n=%td m=%td steps=%td method %d", n, m, T, method);
            tl_ref_plan plan;
            double mem[64], work[256];
            memset(&plan, 0xA5, sizeof plan);
            memset(mem, 0xA5, sizeof mem), memset(work, 0xA5, sizeof work);
            CHECK(tl_ref_plan_init(&plan, mem, (tl_ref_method)method, &dyn, 0, Ad, Bd, 0.25, T,
                                   work) == TL_ERR_SHAPE,
                  "plan of steps=%td method %d accepted", T, method);
            CHECK(untouched(&plan, sizeof plan, 0xA5) && untouched(mem, sizeof mem, 0xA5) &&
                      untouched(work, sizeof work, 0xA5),
                  "refused plan of steps=%td method %d wrote", T, method);
        }
    }
}

int main(void)
{
    test_forms();
    test_shared_batch();
    test_double_integrator();
    test_per_sample_model();
    test_failures();
    test_wide_input();
    test_chain();
    test_huge();
    printf("test_reference: %d passed, %d failed\n", n_passed, n_failed);
    return n_failed == 0 ? 0 : 1;
}
