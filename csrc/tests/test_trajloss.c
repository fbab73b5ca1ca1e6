/*
 * test_trajloss.c -- C-only tests of the trajloss core against closed forms
 * and plain loops written here. Prints one line per failure and
 * "N passed, N failed".
 *
 * Systems come in every form the core takes (tl_dynamics): shared,
 * per-sample, time-varying or both, with or without an offset, laid out
 * batch-major or step-major with gaps between matrices. The reference loops
 * never read a tl_dynamics: they read a full copy of every sample's matrices
 * at every step, made when the system was built (formed_sys below).
 */
#define _POSIX_C_SOURCE 200809L /* pthreads and nanosleep under -std=c99 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel.h"
#include "trajloss.h"

#include "check.h"

/* max |a - b| / max(1, max |b|) over count entries */
static double rel_err(ptrdiff_t count, const double *a, const double *b)
{
    double diff = 0.0, scale = 1.0;
    for (ptrdiff_t i = 0; i < count; i++) {
        diff = fmax(diff, fabs(a[i] - b[i]));
        scale = fmax(scale, fabs(b[i]));
    }
    return diff / scale;
}




static tl_status expm_alloc(ptrdiff_t n, const double *A, double *E)
{
    void *work = xmalloc(tl_expm_work_bytes(n));
    tl_status status = tl_expm(n, A, E, work, NULL);
    free(work);
    return status;
}

static void test_status_messages(void)
{
    for (int s = 0; s < TL_STATUS_COUNT; s++)
        CHECK(tl_status_message((tl_status)s) != NULL, "message for %d", s);
    CHECK(strcmp(tl_status_message((tl_status)999), "unknown status") == 0, "unknown status");
}

static void test_expm_closed_forms(void)
{
    /* rotation generator: exp([[0, t], [-t, 0]]) = [[cos t, sin t], [-sin t, cos t]] */
    const double ts[] = {0.0, 1e-3, 0.3, 1.7, 6.0, 25.0};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        double t = ts[i], A[4] = {0, t, -t, 0}, E[4];
        double want[4] = {cos(t), sin(t), -sin(t), cos(t)};
        CHECK(expm_alloc(2, A, E) == TL_OK, "expm rotation status");
        CHECK(rel_err(4, E, want) < 1e-13 * fmax(1.0, t), "rotation t=%g err=%g", t,
              rel_err(4, E, want));
    }
    /* scalars over the whole scaling range */
    for (double a = -30.0; a <= 30.0; a += 2.5) {
        double E;
        CHECK(expm_alloc(1, &a, &E) == TL_OK, "expm scalar status");
        CHECK(fabs(E - exp(a)) <= 1e-13 * exp(a), "scalar a=%g: %.17g vs %.17g", a, E, exp(a));
    }
    /* nilpotent: exp(cN) = I + cN + c^2 N^2 / 2 */
    const double c = 3.5;
    double N[9] = {0, c, 0, 0, 0, c, 0, 0, 0}, E[9];
    double want[9] = {1, c, c * c / 2, 0, 1, c, 0, 0, 1};
    CHECK(expm_alloc(3, N, E) == TL_OK, "expm nilpotent status");
    CHECK(rel_err(9, E, want) < 1e-14, "nilpotent err=%g", rel_err(9, E, want));
    /* upper triangular 2x2: exp([[a, b], [0, d]]) has (e^a - e^d) b / (a - d) off the diagonal */
    double a = -1.25, b = 4.0, d = 0.5, T[4] = {a, b, 0, d}, ET[4];
    double wantT[4] = {exp(a), b * (exp(a) - exp(d)) / (a - d), 0, exp(d)};
    CHECK(expm_alloc(2, T, ET) == TL_OK, "expm triangular status");
    CHECK(rel_err(4, ET, wantT) < 1e-14, "triangular err=%g", rel_err(4, ET, wantT));
}

static void test_expm_errors(void)
{
    double A[4] = {0, NAN, 0, 0}, E[4];
    CHECK(expm_alloc(2, A, E) == TL_ERR_VALUE, "NaN input");
    CHECK(tl_expm(0, A, E, E, NULL) == TL_ERR_SHAPE, "n = 0");
    CHECK(tl_expm(2, A, E, NULL, NULL) == TL_ERR_NOMEM, "no work");
    CHECK(tl_expm_work_bytes(0) == 0 && tl_expm_work_bytes(-3) == 0, "work bytes of bad n");
}

/* exp(D R D^-1) = D exp(R) D^-1 for a rotation generator R and D = diag(s, 1):
 * [[cos t, s sin t], [-sin t / s, cos t]], whatever the scaling s. */
static void test_expm_badly_scaled(void)
{
    const double ss[] = {1e4, 1e8, 1e12, 1e16, 0x1p-40};
    const double t = 1.3;
    for (size_t i = 0; i < sizeof ss / sizeof ss[0]; i++) {
        const double s = ss[i];
        double A[4] = {0, t * s, -t / s, 0}, E[4];
        const double want[4] = {cos(t), s * sin(t), -sin(t) / s, cos(t)};
        CHECK(expm_alloc(2, A, E) == TL_OK, "scaled rotation status");
        double worst = 0.0;
        for (int k = 0; k < 4; k++)
            worst = fmax(worst, fabs(E[k] - want[k]) / fabs(want[k]));
        CHECK(worst < 1e-14, "D R D^-1, s=%g: entrywise relative error %g", s, worst);
    }
}

/* Triangular structure is kept exactly and chains of integrators give
 * h^k / k! to the last ulp or two. */
static void test_expm_structure(void)
{
    for (int n = 2; n <= 6; n++) {
        const double hs[] = {0.1, 1.0 / 3.0, 5.0, 100.0};
        for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
            double A[36] = {0}, E[36];
            for (int k = 0; k + 1 < n; k++)
                A[k * n + k + 1] = hs[i];
            CHECK(expm_alloc(n, A, E) == TL_OK, "chain status");
            for (int r = 0; r < n; r++)
                for (int c = 0; c < n; c++) {
                    double want = r > c ? 0.0 : 1.0;
                    for (int k = 1; k <= c - r; k++)
                        want *= hs[i] / k; /* h^(c-r) / (c-r)!, within an ulp */
                    const double ulps = want == 0.0 ? fabs(E[r * n + c]) :
                                        fabs(E[r * n + c] - want) / (DBL_EPSILON * want);
                    CHECK(r > c ? E[r * n + c] == 0.0 : ulps <= 2.0,
                          "chain n=%d h=%g (%d,%d): %.17g vs %.17g", n, hs[i], r, c,
                          E[r * n + c], want);
                }
        }
    }
    /* upper triangular with distinct and repeated diagonal entries */
    const double T[9] = {-3.0, 2.0, 7.0, 0.0, -3.0, 0.5, 0.0, 0.0, 4.0};
    double E[9];
    CHECK(expm_alloc(3, T, E) == TL_OK, "triangular status");
    CHECK(E[3] == 0.0 && E[6] == 0.0 && E[7] == 0.0, "exactly upper triangular");
    CHECK(E[0] == exp(-3.0) && E[4] == exp(-3.0) && E[8] == exp(4.0), "diagonal is exp(t_ii)");
    CHECK(fabs(E[1] - 2.0 * exp(-3.0)) <= 2 * DBL_EPSILON * E[1], "repeated eigenvalue: %g",
          E[1]);
    const double e12 = 0.5 * (exp(4.0) - exp(-3.0)) / 7.0;
    CHECK(fabs(E[5] - e12) <= 4 * DBL_EPSILON * e12, "superdiagonal: %g vs %g", E[5], e12);
}

static int poll_stop(void *ctx)
{
    ++*(int *)ctx;
    return 1;
}

static int poll_go(void *ctx)
{
    ++*(int *)ctx;
    return 0;
}

/* The cancel hook: polled during the computation, stops it when it says so. */
static void test_expm_cancel(void)
{
    enum { N = 40 };
    double *A = xmalloc(N * N * sizeof(double)), *E = xmalloc(N * N * sizeof(double));
    unsigned state = 7u;
    for (int i = 0; i < N * N; i++)
        A[i] = 3.0 * uniform(&state);
    void *work = xmalloc(tl_expm_work_bytes(N));
    int calls = 0;
    const tl_cancel stop = {poll_stop, &calls}, go = {poll_go, &calls}, none = {NULL, NULL};
    CHECK(tl_expm(N, A, E, work, &stop) == TL_ERR_INTERRUPTED && calls == 1, "stop: %d", calls);
    calls = 0;
    CHECK(tl_expm(N, A, E, work, &go) == TL_OK && calls > 3, "go: %d polls", calls);
    double *E2 = xmalloc(N * N * sizeof(double));
    CHECK(tl_expm(N, A, E2, work, &none) == TL_OK, "NULL poll");
    CHECK(memcmp(E, E2, N * N * sizeof(double)) == 0, "polling does not change the result");
    double B[N], *Bd = xmalloc(N * sizeof(double));
    for (int i = 0; i < N; i++)
        B[i] = uniform(&state);
    void *dwork = xmalloc(tl_discretize_work_bytes(N, 1));
    calls = 0;
    CHECK(tl_discretize(TL_DISC_ZOH, N, 1, A, B, 1.0, E, Bd, dwork, &stop) ==
              TL_ERR_INTERRUPTED, "discretize stop");
    CHECK(tl_discretize(TL_DISC_RK4, N, 1, A, B, 1.0, E, Bd, dwork, &stop) == TL_ERR_INTERRUPTED,
          "rk4 stop");
    CHECK(strcmp(tl_status_message(TL_ERR_INTERRUPTED), "interrupted") == 0, "message");
    free(A), free(E), free(E2), free(Bd), free(work), free(dwork);
}

/* ZOH of a stiff scalar and of the double integrator, against closed forms. */
static void test_discretize_exact(void)
{
    double a = -1.0, b = 100.0, ad, bd;
    void *work = xmalloc(tl_discretize_work_bytes(2, 1));
    CHECK(tl_discretize(TL_DISC_ZOH, 1, 1, &a, &b, 20.0, &ad, &bd, work, NULL) == TL_OK, "st");
    CHECK(fabs(ad - exp(-20.0)) <= DBL_EPSILON * exp(-20.0), "stiff Ad %.17g", ad);
    CHECK(fabs(bd + 100.0 * expm1(-20.0)) <= 2 * DBL_EPSILON * bd, "stiff Bd %.17g", bd);
    const double A[4] = {0, 1, 0, 0}, B[2] = {0, 1};
    const double hs[] = {5.0, 100.0, 0.1};
    for (size_t i = 0; i < 3; i++) {
        const double h = hs[i];
        double Ad[4], Bd[2];
        CHECK(tl_discretize(TL_DISC_ZOH, 2, 1, A, B, h, Ad, Bd, work, NULL) == TL_OK, "di");
        CHECK(Ad[0] == 1.0 && Ad[1] == h && Ad[2] == 0.0 && Ad[3] == 1.0,
              "double integrator h=%g Ad = [%.17g %.17g; %.17g %.17g]", h, Ad[0], Ad[1], Ad[2],
              Ad[3]);
        CHECK(Bd[0] == h * h / 2 && Bd[1] == h, "double integrator h=%g Bd", h);
    }
    free(work);
}

static tl_status discretize_alloc(tl_disc_method method, ptrdiff_t n, ptrdiff_t m,
                                  const double *A, const double *B, double dt,
                                  double *Ad, double *Bd)
{
    void *work = xmalloc(tl_discretize_work_bytes(n, m));
    tl_status status = tl_discretize(method, n, m, A, B, dt, Ad, Bd, work, NULL);
    free(work);
    return status;
}

static void test_discretize(void)
{
    const double A[4] = {0, 1, 0, 0}, B[2] = {0, 1};
    const double dts[] = {1e-3, 1.0 / 3.0, 1.0, 7.0};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        double h = dts[i], Ad[4], Bd[2];
        double wantA[4] = {1, h, 0, 1}, wantB[2] = {h * h / 2, h};
        CHECK(discretize_alloc(TL_DISC_ZOH, 2, 1, A, B, h, Ad, Bd) == TL_OK, "zoh status");
        CHECK(rel_err(4, Ad, wantA) < 1e-15 && rel_err(2, Bd, wantB) < 1e-15,
              "double integrator zoh dt=%g", h);
        /* RK4 is exact for the double integrator's cubic-free dynamics */
        CHECK(discretize_alloc(TL_DISC_RK4, 2, 1, A, B, h, Ad, Bd) == TL_OK, "rk4 status");
        CHECK(rel_err(4, Ad, wantA) < 1e-15 && rel_err(2, Bd, wantB) < 1e-15,
              "double integrator rk4 dt=%g", h);
        double eulA[4] = {1, h, 0, 1}, eulB[2] = {0, h};
        CHECK(discretize_alloc(TL_DISC_EULER, 2, 1, A, B, h, Ad, Bd) == TL_OK, "euler status");
        CHECK(rel_err(4, Ad, eulA) < 1e-15 && rel_err(2, Bd, eulB) < 1e-15,
              "double integrator euler dt=%g", h);
    }
    /* scalar system xdot = a x + b u */
    const double a = -0.7, b = 2.0, h = 0.4;
    double Ad, Bd;
    CHECK(discretize_alloc(TL_DISC_ZOH, 1, 1, &a, &b, h, &Ad, &Bd) == TL_OK, "scalar zoh");
    CHECK(fabs(Ad - exp(a * h)) < 1e-15 && fabs(Bd - (exp(a * h) - 1) / a * b) < 1e-15,
          "scalar zoh values");
    const double F = a * h;
    CHECK(discretize_alloc(TL_DISC_RK4, 1, 1, &a, &b, h, &Ad, &Bd) == TL_OK, "scalar rk4");
    CHECK(fabs(Ad - (1 + F + F * F / 2 + F * F * F / 6 + F * F * F * F / 24)) < 1e-15 &&
              fabs(Bd - h * b * (1 + F / 2 + F * F / 6 + F * F * F / 24)) < 1e-15,
          "scalar rk4 values");

    double Ad4[4], Bd2[2], work[8];
    CHECK(tl_discretize(TL_DISC_ZOH, 2, 1, A, B, 0.0, Ad4, Bd2, work, NULL) == TL_ERR_VALUE, "dt=0");
    CHECK(tl_discretize(TL_DISC_ZOH, 2, 1, A, B, -1.0, Ad4, Bd2, work, NULL) == TL_ERR_VALUE, "dt<0");
    CHECK(tl_discretize(TL_DISC_ZOH, 2, 1, A, B, NAN, Ad4, Bd2, work, NULL) == TL_ERR_VALUE, "dt NaN");
    CHECK(tl_discretize(TL_DISC_COUNT, 2, 1, A, B, 1.0, Ad4, Bd2, work, NULL) == TL_ERR_VALUE,
          "unknown method");
    CHECK(tl_discretize(TL_DISC_ZOH, 0, 1, A, B, 1.0, Ad4, Bd2, work, NULL) == TL_ERR_SHAPE, "n=0");
    CHECK(tl_discretize(TL_DISC_ZOH, 2, 0, A, B, 1.0, Ad4, Bd2, work, NULL) == TL_ERR_SHAPE, "m=0");
    const double Anan[4] = {0, 1, NAN, 0};
    CHECK(tl_discretize(TL_DISC_EULER, 2, 1, Anan, B, 1.0, Ad4, Bd2, work, NULL) == TL_ERR_VALUE,
          "NaN in A");
}

/* A random stable-ish system with n states, m inputs. */
static void random_system(ptrdiff_t n, ptrdiff_t m, double *Ad, double *Bd, unsigned *seed)
{
    for (ptrdiff_t i = 0; i < n * n; i++)
        Ad[i] = 0.4 * uniform(seed) / sqrt((double)n) + (i % (n + 1) == 0 ? 0.5 : 0.0);
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bd[i] = uniform(seed);
}

static void test_rollout(void)
{
    unsigned seed = 12345u;
    const ptrdiff_t dims[][2] = {{1, 1}, {2, 1}, {3, 2}, {6, 2}, {8, 3}};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const ptrdiff_t n = dims[d][0], m = dims[d][1], B = 3, T = 7;
        double *Ad = xmalloc(sizeof(double) * n * n), *Bd = xmalloc(sizeof(double) * n * m);
        random_system(n, m, Ad, Bd, &seed);
        const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
        double *x0 = xmalloc(sizeof(double) * B * n), *u = xmalloc(sizeof(double) * B * T * m);
        double *S = xmalloc(sizeof(double) * B * (T + 1) * n);
        double *ref = xmalloc(sizeof(double) * B * (T + 1) * n);
        void *work = xmalloc(tl_rollout_work_bytes(n, m));
        for (ptrdiff_t i = 0; i < B * n; i++)
            x0[i] = uniform(&seed);
        for (ptrdiff_t i = 0; i < B * T * m; i++)
            u[i] = uniform(&seed);

        /* naive reference, written independently of the kernel */
        for (ptrdiff_t b = 0; b < B; b++) {
            double *r = ref + b * (T + 1) * n;
            memcpy(r, x0 + b * n, sizeof(double) * n);
            for (ptrdiff_t k = 0; k < T; k++)
                for (ptrdiff_t i = 0; i < n; i++) {
                    double v = 0;
                    for (ptrdiff_t j = 0; j < n; j++)
                        v += Ad[i * n + j] * r[k * n + j];
                    for (ptrdiff_t j = 0; j < m; j++)
                        v += Bd[i * m + j] * u[(b * T + k) * m + j];
                    r[(k + 1) * n + i] = v;
                }
        }
        CHECK(tl_rollout(&sys, TL_F64, B, T, x0, u, S, work) == TL_OK, "rollout status");
        CHECK(rel_err(B * (T + 1) * n, S, ref) < 1e-14, "rollout n=%td m=%td", n, m);

        /* float32: within float32 rounding of the float64 result */
        float *x0f = xmalloc(sizeof(float) * B * n), *uf = xmalloc(sizeof(float) * B * T * m);
        float *Sf = xmalloc(sizeof(float) * B * (T + 1) * n);
        double *Sfd = xmalloc(sizeof(double) * B * (T + 1) * n);
        for (ptrdiff_t i = 0; i < B * n; i++)
            x0f[i] = (float)x0[i], x0[i] = x0f[i];
        for (ptrdiff_t i = 0; i < B * T * m; i++)
            uf[i] = (float)u[i], u[i] = uf[i];
        CHECK(tl_rollout(&sys, TL_F32, B, T, x0f, uf, Sf, work) == TL_OK, "rollout f32 status");
        CHECK(tl_rollout(&sys, TL_F64, B, T, x0, u, S, work) == TL_OK, "rollout status");
        for (ptrdiff_t i = 0; i < B * (T + 1) * n; i++)
            Sfd[i] = Sf[i];
        CHECK(rel_err(B * (T + 1) * n, Sfd, S) < 1e-6, "rollout f32 n=%td", n);

        /* adjoint against central differences of L = <G, rollout(x0, u)> */
        double *G = xmalloc(sizeof(double) * B * (T + 1) * n);
        double *gu = xmalloc(sizeof(double) * B * T * m), *gx = xmalloc(sizeof(double) * B * n);
        for (ptrdiff_t i = 0; i < B * (T + 1) * n; i++)
            G[i] = uniform(&seed);
        CHECK(tl_rollout_vjp(&sys, TL_F64, B, T, NULL, NULL, G, gu, gx, work) == TL_OK,
              "vjp status");
        double worst = 0.0;
        const double h = 1e-6;
        for (ptrdiff_t i = 0; i < B * T * m + B * n; i++) {
            double *p = i < B * T * m ? u + i : x0 + (i - B * T * m);
            double L[2], keep = *p;
            for (int side = 0; side < 2; side++) {
                *p = keep + (side ? -h : h);
                tl_rollout(&sys, TL_F64, B, T, x0, u, S, work);
                L[side] = 0;
                for (ptrdiff_t q = 0; q < B * (T + 1) * n; q++)
                    L[side] += G[q] * S[q];
            }
            *p = keep;
            double fd = (L[0] - L[1]) / (2 * h);
            double an = i < B * T * m ? gu[i] : gx[i - B * T * m];
            worst = fmax(worst, fabs(fd - an) / fmax(1.0, fabs(fd)));
        }
        CHECK(worst < 1e-7, "vjp vs finite differences n=%td: %g", n, worst);
        CHECK(tl_rollout_vjp(&sys, TL_F64, B, T, x0, u, G, NULL, gx, work) == TL_OK,
              "vjp no grad_u");

        free(Ad), free(Bd), free(x0), free(u), free(S), free(ref), free(work);
        free(x0f), free(uf), free(Sf), free(Sfd), free(G), free(gu), free(gx);
    }
}

static void test_rollout_errors(void)
{
    double Ad[1] = {1}, Bd[1] = {1}, x0[1] = {0}, u[1] = {0}, S[2];
    void *work = xmalloc(tl_rollout_work_bytes(1, 1));
    const tl_dynamics sys = tl_dynamics_linear(1, 1, Ad, Bd);
    CHECK(tl_rollout(&sys, TL_F64, -1, 1, x0, u, S, work) == TL_ERR_SHAPE, "batch < 0");
    CHECK(tl_rollout(&sys, TL_F64, 1, -1, x0, u, S, work) == TL_ERR_SHAPE, "steps < 0");
    CHECK(tl_rollout(&sys, TL_F64, 1, 1, x0, u, S, NULL) == TL_ERR_NOMEM, "no work");
    CHECK(tl_rollout(&sys, TL_F64, 1, 1, NULL, u, S, work) == TL_ERR_VALUE, "no x0");
    CHECK(tl_rollout(NULL, TL_F64, 1, 1, x0, u, S, work) == TL_ERR_VALUE, "no system");
    CHECK(tl_rollout(&sys, TL_DTYPE_COUNT, 1, 1, x0, u, S, work) == TL_ERR_VALUE, "bad dtype");
    CHECK(tl_rollout(&sys, (tl_dtype)-1, 1, 1, x0, u, S, work) == TL_ERR_VALUE, "dtype -1");
    tl_dynamics bad = tl_dynamics_linear(0, 1, Ad, Bd);
    CHECK(tl_rollout(&bad, TL_F64, 1, 1, x0, u, S, work) == TL_ERR_SHAPE, "n = 0");
    CHECK(tl_rollout(&sys, TL_F64, 0, 3, NULL, NULL, NULL, work) == TL_OK, "empty batch");
    CHECK(tl_rollout(&sys, TL_F64, 1, 0, x0, NULL, S, work) == TL_OK && S[0] == x0[0], "no steps");
    CHECK(tl_rollout_vjp(&sys, TL_F64, 1, 1, NULL, NULL, NULL, u, x0, work) == TL_ERR_VALUE,
          "vjp no grad");
    CHECK(tl_rollout_vjp(&sys, TL_F32, 1, 1, NULL, NULL, S, u, x0, NULL) == TL_ERR_NOMEM,
          "vjp no work");
    CHECK(tl_rollout_work_bytes(0, 1) == 0 && tl_rollout_work_bytes(TL_MAX_DIM + 1, 1) == 0 &&
              tl_rollout_work_bytes(1, 0) == 0 && tl_rollout_work_bytes(1, -1) == 0,
          "rollout work of a bad n or m");
    free(work);
}

static void test_time_weights(void)
{
    /* one sequence, gamma = 0.375: w_t = gamma^t T (1 - gamma) / (1 - gamma^T) (seed 004) */
    const ptrdiff_t T = 7;
    const double g = 0.375;
    double w[3 * 7], work[16];
    tl_selection sel = {1, T, NULL, NULL, g};
    CHECK(tl_time_weights(&sel, w, work) == TL_OK, "time weights status");
    double worst = 0.0;
    for (ptrdiff_t t = 0; t < T; t++)
        worst = fmax(worst, fabs(w[t] - pow(g, (double)t) * T * (1 - g) / (1 - pow(g, (double)T))));
    CHECK(worst < 1e-14, "seed 004 weights: %g", worst);

    /* lengths: rows average 1 over their prefix, zero after; length 0 is all zero */
    const int64_t lengths[3] = {0, 3, 7};
    tl_selection sel2 = {3, T, lengths, NULL, 1.5};
    CHECK(tl_time_weights(&sel2, w, work) == TL_OK, "lengths status");
    for (int b = 0; b < 3; b++) {
        double sum = 0.0, tail = 0.0;
        for (ptrdiff_t t = 0; t < T; t++)
            *(t < lengths[b] ? &sum : &tail) += w[b * T + t];
        CHECK(fabs(sum - (double)lengths[b]) < 1e-13 && tail == 0.0, "row %d mean", b);
    }
    /* gamma > 1 increases along the sequence */
    CHECK(w[2 * T + 6] > w[2 * T + 5] && w[2 * T + 1] > w[2 * T], "late emphasis");

    /* long sequences do not underflow into 0/0 nor overflow */
    const ptrdiff_t L = 10000;
    double *wl = xmalloc(sizeof(double) * L), *wk = xmalloc(tl_time_weights_work_bytes(L));
    const double gammas[] = {0.375, 1.5, 1.0 - 1e-12};
    for (size_t i = 0; i < 3; i++) {
        tl_selection s3 = {1, L, NULL, NULL, gammas[i]};
        CHECK(tl_time_weights(&s3, wl, wk) == TL_OK, "long status");
        double sum = 0.0;
        int finite = 1;
        for (ptrdiff_t t = 0; t < L; t++) {
            finite &= isfinite(wl[t]);
            sum += wl[t];
        }
        CHECK(finite && fabs(sum / L - 1.0) < 1e-12, "T=10000 gamma=%g mean %g", gammas[i], sum / L);
    }
    free(wl), free(wk);

    tl_selection bad = {1, T, lengths, NULL, 0.0};
    CHECK(tl_time_weights(&bad, w, work) == TL_ERR_VALUE, "discount 0");
    const int64_t too_long[1] = {8};
    tl_selection bad2 = {1, T, too_long, NULL, 1.0};
    CHECK(tl_time_weights(&bad2, w, work) == TL_ERR_VALUE, "length > T");
    const unsigned char mask[7] = {1};
    tl_selection bad3 = {1, T, lengths, mask, 1.0};
    CHECK(tl_time_weights(&bad3, w, work) == TL_ERR_VALUE, "lengths and mask");
}

/* Sizes whose scratch cannot be addressed: the query says 0 (it used to wrap
 * around to a few bytes, and the powers overflowed them), the call refuses
 * with TL_ERR_SHAPE before writing anything. */
static void test_time_weights_huge(void)
{
    const size_t max_doubles = SIZE_MAX / sizeof(double);
    const ptrdiff_t last_ok = (ptrdiff_t)(max_doubles - 2); /* steps + 2 doubles */
    CHECK(tl_time_weights_work_bytes(last_ok) == max_doubles * sizeof(double),
          "largest addressable work");
    const ptrdiff_t huge[] = {last_ok + 1, (ptrdiff_t)1 << 61, ((ptrdiff_t)1 << 61) - 1,
                              (ptrdiff_t)1 << 62, PTRDIFF_MAX - 1, PTRDIFF_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        CHECK(tl_time_weights_work_bytes(huge[i]) == 0, "work bytes of steps=%td", huge[i]);
        double w[4], work[4];
        memset(w, 0xA5, sizeof w), memset(work, 0xA5, sizeof work);
        tl_selection sel = {0, huge[i], NULL, NULL, 0.5};
        CHECK(tl_time_weights(&sel, w, work) == TL_ERR_SHAPE, "steps=%td accepted", huge[i]);
        CHECK(tl_time_weights(&sel, w, NULL) == TL_ERR_SHAPE, "steps=%td without work", huge[i]);
        CHECK(untouched(w, sizeof w, 0xA5) && untouched(work, sizeof work, 0xA5),
              "steps=%td wrote", huge[i]);
    }
    /* batch x steps weights that cannot be addressed, with small steps */
    double w[4], work[4];
    memset(w, 0xA5, sizeof w), memset(work, 0xA5, sizeof work);
    tl_selection wide = {(ptrdiff_t)1 << 40, (ptrdiff_t)1 << 40, NULL, NULL, 1.0};
    CHECK(tl_time_weights_work_bytes(wide.steps) != 0, "2^40 steps are addressable");
    CHECK(tl_time_weights(&wide, w, work) == TL_ERR_SHAPE, "2^40 x 2^40 weights accepted");
    CHECK(untouched(w, sizeof w, 0xA5) && untouched(work, sizeof work, 0xA5),
          "2^40 x 2^40 weights wrote");
}

/* Naive combined loss value for mse, uniform weights, no mask (the reference). */
static double naive_combined(const tl_dynamics *sys, ptrdiff_t B, ptrdiff_t T, const double *u,
                             const double *x0, const double *ru, const double *rs,
                             double weight, double *S)
{
    const ptrdiff_t n = sys->n, m = sys->m;
    const double *Ad = sys->A.data, *Bd = sys->B.data;
    for (ptrdiff_t b = 0; b < B; b++) {
        double *r = S + b * (T + 1) * n;
        memcpy(r, x0 + b * n, sizeof(double) * n);
        for (ptrdiff_t k = 0; k < T; k++)
            for (ptrdiff_t i = 0; i < n; i++) {
                double v = 0;
                for (ptrdiff_t j = 0; j < n; j++)
                    v += Ad[i * n + j] * r[k * n + j];
                for (ptrdiff_t j = 0; j < m; j++)
                    v += Bd[i * m + j] * u[(b * T + k) * m + j];
                r[(k + 1) * n + i] = v;
            }
    }
    double c = 0.0, t = 0.0;
    for (ptrdiff_t i = 0; i < B * T * m; i++)
        c += (u[i] - ru[i]) * (u[i] - ru[i]);
    for (ptrdiff_t b = 0; b < B; b++)
        for (ptrdiff_t k = 1; k <= T; k++)
            for (ptrdiff_t i = 0; i < n; i++) {
                double r = S[(b * (T + 1) + k) * n + i] - rs[(b * (T + 1) + k) * n + i];
                t += r * r;
            }
    return c / (double)(B * T * m) + weight * t / (double)(B * T * n);
}

/* The same numbers bit for bit (the struct's padding is not compared). */
static int same_value(const tl_loss_value *a, const tl_loss_value *b)
{
    const double x[4] = {a->total, a->control, a->trajectory, a->terminal};
    const double y[4] = {b->total, b->control, b->trajectory, b->terminal};
    return memcmp(x, y, sizeof x) == 0 && a->nonfinite == b->nonfinite;
}

/* A loss spec with the given selection and terms, mse, weights (1, 0.3, 0.2),
 * one thread: the fields a test does not set. */
static tl_loss_spec basic_spec(ptrdiff_t B, ptrdiff_t T, unsigned terms)
{
    tl_loss_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.sel.batch = B, spec.sel.steps = T, spec.sel.discount = 1.0;
    spec.penalty = TL_PENALTY_MSE, spec.delta = 1.0, spec.terms = terms;
    spec.control_weight = 1.0, spec.trajectory_weight = 0.3, spec.terminal_weight = 0.2;
    spec.threads = 1, spec.kernel = TL_KERNEL_AUTO;
    return spec;
}

static void test_losses(void)
{
    unsigned seed = 777u;
    const ptrdiff_t n = 3, m = 2, B = 4, T = 6;
    double Ad[9], Bd[6];
    random_system(n, m, Ad, Bd, &seed);
    const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
    double u[4 * 6 * 2], ru[4 * 6 * 2], x0[4 * 3], rs[4 * 7 * 3], S[4 * 7 * 3];
    double gu[4 * 6 * 2], gx[4 * 3];
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        u[i] = uniform(&seed), ru[i] = uniform(&seed);
    for (size_t i = 0; i < sizeof x0 / sizeof x0[0]; i++)
        x0[i] = uniform(&seed);
    for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++)
        rs[i] = uniform(&seed);

    tl_loss_spec spec = basic_spec(B, T, TL_TERM_CONTROL | TL_TERM_TRAJECTORY);
    spec.trajectory_weight = 0.3;
    void *work = xmalloc(tl_loss_work_bytes(&sys, 0, &spec));
    tl_loss_io io = {TL_F64, u, x0, ru, rs, NULL, gu, gx};
    tl_loss_value v;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_OK, "combined status");
    double want = naive_combined(&sys, B, T, u, x0, ru, rs, 0.3, S);
    CHECK(fabs(v.total - want) < 1e-14 * fabs(want), "combined value %.17g vs %.17g", v.total,
          want);

    /* gradient against central differences of the naive value */
    double worst = 0.0;
    for (ptrdiff_t i = 0; i < B * T * m + B * n; i++) {
        double *p = i < B * T * m ? u + i : x0 + (i - B * T * m), keep = *p, L[2];
        for (int side = 0; side < 2; side++) {
            *p = keep + (side ? -1e-6 : 1e-6);
            L[side] = naive_combined(&sys, B, T, u, x0, ru, rs, 0.3, S);
        }
        *p = keep;
        double fd = (L[0] - L[1]) / 2e-6, an = i < B * T * m ? gu[i] : gx[i - B * T * m];
        worst = fmax(worst, fabs(fd - an));
    }
    CHECK(worst < 1e-8, "combined gradient vs finite differences: %g", worst);

    /* padding: steps past each length are never read and get zero gradient */
    const int64_t lengths[4] = {6, 2, 0, 4};
    spec.sel.lengths = lengths;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_OK, "padded status");
    const double before = v.total;
    for (ptrdiff_t k = 2; k < T; k++)
        u[(1 * T + k) * m] = 1e300, rs[(1 * (T + 1) + k + 1) * n] = NAN;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_OK, "padded status 2");
    CHECK(v.total == before, "padding changed the value: %.17g vs %.17g", v.total, before);
    int zero = 1;
    for (ptrdiff_t k = 2; k < T; k++)
        zero &= gu[(1 * T + k) * m] == 0.0 && gu[(1 * T + k) * m + 1] == 0.0;
    for (ptrdiff_t i = 0; i < T * m; i++)
        zero &= gu[2 * T * m + i] == 0.0;
    CHECK(zero && gx[2 * n] == 0.0, "padded steps have zero gradient");

    /* control loss alone equals numpy.mean((u - ru)^2) with uniform weights */
    double g1[4 * 6 * 2];
    tl_loss_spec cs = basic_spec(B, T, TL_TERM_CONTROL);
    void *cw = xmalloc(tl_loss_work_bytes(NULL, m, &cs));
    for (ptrdiff_t i = 0; i < B * T * m; i++)
        u[i] = uniform(&seed);
    double mse = 0.0;
    for (ptrdiff_t i = 0; i < B * T * m; i++)
        mse += (u[i] - ru[i]) * (u[i] - ru[i]);
    mse /= (double)(B * T * m);
    const tl_loss_io cio = {TL_F64, u, NULL, ru, NULL, NULL, g1, NULL};
    CHECK(tl_control_loss(&cs, m, &cio, &v, cw) == TL_OK, "control status");
    CHECK(fabs(v.total - mse) < 1e-15, "control mse %.17g vs %.17g", v.total, mse);
    CHECK(fabs(g1[5] - 2 * (u[5] - ru[5]) / (double)(B * T * m)) < 1e-16, "control grad");

    /* errors */
    const int64_t empty[4] = {0, 0, 0, 0};
    cs.sel.lengths = empty;
    CHECK(tl_control_loss(&cs, m, &cio, &v, cw) == TL_ERR_EMPTY, "empty selection");
    cs.sel.lengths = NULL;
    cs.penalty = TL_PENALTY_HUBER;
    cs.delta = 0.0;
    CHECK(tl_control_loss(&cs, m, &cio, &v, cw) == TL_ERR_VALUE, "huber delta 0");
    cs.penalty = TL_PENALTY_MSE;
    tl_loss_io bad_io = cio;
    bad_io.dtype = TL_DTYPE_COUNT;
    CHECK(tl_control_loss(&cs, m, &bad_io, &v, cw) == TL_ERR_VALUE, "control loss dtype");
    CHECK(tl_control_loss(&cs, m, &cio, &v, NULL) == TL_ERR_NOMEM, "control loss without work");
    spec.sel.lengths = NULL;
    spec.trajectory_weight = -1.0;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_ERR_VALUE, "negative weight");
    spec.trajectory_weight = 1.0;
    tl_loss_io no_ref = io;
    no_ref.ref_controls = NULL;
    CHECK(tl_rollout_loss(&sys, &spec, &no_ref, &v, work) == TL_ERR_VALUE, "missing reference");
    no_ref = io, no_ref.dtype = (tl_dtype)-1;
    CHECK(tl_rollout_loss(&sys, &spec, &no_ref, &v, work) == TL_ERR_VALUE, "rollout loss dtype");
    spec.kernel = TL_KERNEL_COUNT;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_ERR_VALUE, "unknown kernel");
    spec.kernel = (tl_kernel)-1;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_ERR_VALUE, "kernel -1");
    spec.kernel = TL_KERNEL_AUTO;
    CHECK(tl_rollout_loss(&sys, &spec, &io, &v, NULL) == TL_ERR_NOMEM, "rollout loss without work");
    free(work), free(cw);
}

/* Results are bit-for-bit the same for any number of threads, and scratch
 * sizes that would overflow are refused (0) rather than wrapped. */
static void test_loss_threads(void)
{
    unsigned seed = 4242u;
    /* B: many chunks of any reasonable size, enough for several workers, and
     * a partial tile at the end */
    const ptrdiff_t n = 3, m = 2, B = 8 * 256 + 3, T = 9;
    double Ad[9], Bd[6];
    random_system(n, m, Ad, Bd, &seed);
    const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
    double *u = xmalloc(sizeof(double) * B * T * m), *ru = xmalloc(sizeof(double) * B * T * m);
    double *x0 = xmalloc(sizeof(double) * B * n), *rs = xmalloc(sizeof(double) * B * (T + 1) * n);
    int64_t *len = xmalloc(sizeof(int64_t) * B);
    for (ptrdiff_t i = 0; i < B * T * m; i++)
        u[i] = uniform(&seed), ru[i] = uniform(&seed);
    for (ptrdiff_t i = 0; i < B * n; i++)
        x0[i] = uniform(&seed);
    for (ptrdiff_t i = 0; i < B * (T + 1) * n; i++)
        rs[i] = uniform(&seed);
    for (ptrdiff_t b = 0; b < B; b++)
        len[b] = (int64_t)(b % (T + 1));
    double *gu[2], *gx[2], *gc[2];
    tl_loss_value v[2], vc[2];
    for (int r = 0; r < 2; r++) {
        gu[r] = xmalloc(sizeof(double) * B * T * m);
        gc[r] = xmalloc(sizeof(double) * B * T * m);
        gx[r] = xmalloc(sizeof(double) * B * n);
    }
    int same = 1;
    tl_pool *pool = xmalloc(tl_pool_bytes());
    CHECK(tl_pool_init(pool) == TL_OK, "pool init");
    /* 1..4 threads, started for each call or kept in a pool between calls */
    for (int variant = 0; variant < 8; variant++) {
        const int threads = 1 + variant / 2, r = variant > 0;
        tl_loss_spec spec = basic_spec(B, T, 7u);
        spec.sel.lengths = len, spec.sel.discount = 0.9;
        spec.penalty = TL_PENALTY_HUBER, spec.delta = 0.5, spec.include_initial = 1;
        spec.threads = threads, spec.pool = variant % 2 ? pool : NULL;
        void *work = xmalloc(tl_loss_work_bytes(&sys, 0, &spec));
        const tl_loss_io io = {TL_F64, u, x0, ru, rs, NULL, gu[r], gx[r]};
        CHECK(tl_rollout_loss(&sys, &spec, &io, &v[r], work) == TL_OK,
              "threaded loss status (%d threads)", threads);
        free(work);
        spec.terms = TL_TERM_CONTROL;
        work = xmalloc(tl_loss_work_bytes(NULL, m, &spec));
        const tl_loss_io cio = {TL_F64, u, NULL, ru, NULL, NULL, gc[r], NULL};
        CHECK(tl_control_loss(&spec, m, &cio, &vc[r], work) == TL_OK,
              "threaded control loss status (variant %d)", variant);
        free(work);
        if (r)
            same &= same_value(&v[0], &v[1]) && same_value(&vc[0], &vc[1]) &&
                    memcmp(gu[0], gu[1], sizeof(double) * B * T * m) == 0 &&
                    memcmp(gc[0], gc[1], sizeof(double) * B * T * m) == 0 &&
                    memcmp(gx[0], gx[1], sizeof(double) * B * n) == 0;
    }
    tl_pool_stop(pool);
    free(pool);
    CHECK(same, "losses identical bit for bit for 1..4 threads, with and without a pool");
    const tl_dynamics big = tl_dynamics_linear(TL_MAX_DIM, TL_MAX_DIM, Ad, Bd);
    tl_loss_spec huge = basic_spec(1, PTRDIFF_MAX / 2, 7u);
    const size_t rollout_bytes = tl_loss_work_bytes(&big, 0, &huge);
    huge.sel.steps = PTRDIFF_MAX / 4;
    CHECK(rollout_bytes == 0 && tl_loss_work_bytes(NULL, PTRDIFF_MAX / 4, &huge) == 0,
          "overflowing scratch sizes are refused");
    for (int r = 0; r < 2; r++)
        free(gu[r]), free(gx[r]), free(gc[r]);
    free(u), free(ru), free(x0), free(rs), free(len);
}

/* ---- systems in every form ------------------------------------------------
 * A field is shared, per sample, per step or both (bit 1: per sample, bit 2:
 * per step); the offset may also be absent. The tl_dynamics points into
 * storage laid out batch-major or step-major, with `gap` doubles of NaN
 * between matrices, so that a stride used wrong reads NaN or another
 * matrix. The references read full[b][k], a copy of each sample's matrix at
 * every step made from the values as they were drawn. */
enum { FORM_SHARED = 0, FORM_SAMPLE = 1, FORM_STEP = 2, FORM_BOTH = 3, FORM_ABSENT = 4 };

typedef struct {
    ptrdiff_t n, m, B, T;
    double *A, *Bm, *c; /* full: [B][T][n][n], [B][T][n][m], [B][T][n] (c NULL: no offset) */
    double *store[3];   /* what dyn points into */
    tl_dynamics dyn;
} formed_sys;

typedef struct {
    int form[3];   /* of A, B, c */
    int step_major; /* storage step-major (a step's samples side by side) */
    int gap;       /* NaN doubles after each matrix */
} form_desc;

/* value e of a new matrix (r rows, q columns) of field f (0 A, 1 B, 2 c) */
static double draw(int f, ptrdiff_t e, ptrdiff_t r, unsigned *seed)
{
    if (f == 0) /* stable-ish: 0.5 I plus a small random part */
        return 0.4 * uniform(seed) / sqrt((double)r) + (e % (r + 1) == 0 ? 0.5 : 0.0);
    return f == 1 ? uniform(seed) : 0.5 * uniform(seed);
}

static void build_field(int f, int form, const form_desc *d, ptrdiff_t B, ptrdiff_t T,
                        ptrdiff_t r, ptrdiff_t q, unsigned *seed, double *full, double **store,
                        tl_field *field)
{
    const ptrdiff_t E = r * q, unit = E + d->gap;
    const ptrdiff_t nb = form & FORM_SAMPLE ? B : 1, nk = form & FORM_STEP ? T : 1;
    double *s = xmalloc(sizeof(double) * (size_t)(nb * nk * unit));
    double *entries = xmalloc(sizeof(double) * (size_t)(nb * nk * E));
    for (ptrdiff_t i = 0; i < nb * nk * unit; i++)
        s[i] = NAN;
    ptrdiff_t bs, ss; /* the layout, in doubles */
    if (d->step_major)
        bs = form & FORM_SAMPLE ? unit : 0, ss = form & FORM_STEP ? nb * unit : 0;
    else
        ss = form & FORM_STEP ? unit : 0, bs = form & FORM_SAMPLE ? nk * unit : 0;
    for (ptrdiff_t b = 0; b < nb; b++)
        for (ptrdiff_t k = 0; k < nk; k++) {
            double *e = entries + (b * nk + k) * E;
            for (ptrdiff_t i = 0; i < E; i++)
                e[i] = draw(f, i, r, seed);
            memcpy(s + (d->step_major ? k * nb + b : b * nk + k) * unit, e, sizeof(double) * E);
        }
    for (ptrdiff_t b = 0; b < B; b++)
        for (ptrdiff_t k = 0; k < T; k++)
            memcpy(full + (b * T + k) * E,
                   entries + ((form & FORM_SAMPLE ? b : 0) * nk + (form & FORM_STEP ? k : 0)) * E,
                   sizeof(double) * E);
    free(entries);
    *store = s;
    field->data = s, field->batch_stride = bs, field->step_stride = ss;
}

static void formed_init(formed_sys *s, const form_desc *d, ptrdiff_t n, ptrdiff_t m,
                        ptrdiff_t B, ptrdiff_t T, unsigned *seed)
{
    memset(s, 0, sizeof *s);
    s->n = n, s->m = m, s->B = B, s->T = T;
    const ptrdiff_t BT = B * T > 0 ? B * T : 1;
    s->A = xmalloc(sizeof(double) * (size_t)(BT * n * n));
    s->Bm = xmalloc(sizeof(double) * (size_t)(BT * n * m));
    s->dyn = tl_dynamics_linear(n, m, NULL, NULL);
    build_field(0, d->form[0], d, B, T, n, n, seed, s->A, &s->store[0], &s->dyn.A);
    build_field(1, d->form[1], d, B, T, n, m, seed, s->Bm, &s->store[1], &s->dyn.B);
    if (d->form[2] != FORM_ABSENT) {
        s->c = xmalloc(sizeof(double) * (size_t)(BT * n));
        build_field(2, d->form[2], d, B, T, n, 1, seed, s->c, &s->store[2], &s->dyn.c);
    }
    int per_sample = 0, per_step = 0;
    for (int f = 0; f < 3; f++)
        if (d->form[f] != FORM_ABSENT)
            per_sample |= d->form[f] & FORM_SAMPLE, per_step |= d->form[f] & FORM_STEP;
    s->dyn.batch = per_sample ? B : 0;
    s->dyn.steps = per_step ? T : 0;
}

static void formed_free(formed_sys *s)
{
    free(s->A), free(s->Bm), free(s->c);
    for (int f = 0; f < 3; f++)
        free(s->store[f]);
}

static const char *form_name(int form)
{
    static const char *const names[] = {"shared", "per-sample", "per-step", "per-sample-step",
                                        "absent"};
    return names[form];
}

/* x_{k+1} = A[b][k] x_k + B[b][k] u_k + c[b][k] for k < K, states [K+1][n] of sample b */
static void plain_rollout_one(const formed_sys *s, ptrdiff_t b, ptrdiff_t K, const double *x0,
                              const double *u, double *X)
{
    const ptrdiff_t n = s->n, m = s->m, T = s->T;
    memcpy(X, x0, sizeof(double) * n);
    for (ptrdiff_t k = 0; k < K; k++) {
        const double *A = s->A + (b * T + k) * n * n, *Bm = s->Bm + (b * T + k) * n * m;
        for (ptrdiff_t i = 0; i < n; i++) {
            double v = s->c ? s->c[(b * T + k) * n + i] : 0.0;
            for (ptrdiff_t j = 0; j < n; j++)
                v += A[i * n + j] * X[k * n + j];
            for (ptrdiff_t j = 0; j < m; j++)
                v += Bm[i * m + j] * u[k * m + j];
            X[(k + 1) * n + i] = v;
        }
    }
}

/* lam_K = G_K, lam_k = G_k + A[b][k]^T lam_{k+1}; gu_k = B[b][k]^T lam_{k+1} (k < K),
 * added to gu (T x m) and written to gx0 */
static void plain_adjoint_one(const formed_sys *s, ptrdiff_t b, ptrdiff_t K, const double *G,
                              double *gu, double *gx0)
{
    const ptrdiff_t n = s->n, m = s->m, T = s->T;
    double lam[16], prev[16];
    memcpy(lam, G + K * n, sizeof(double) * n);
    for (ptrdiff_t k = K - 1; k >= 0; k--) {
        const double *A = s->A + (b * T + k) * n * n, *Bm = s->Bm + (b * T + k) * n * m;
        for (ptrdiff_t j = 0; j < m; j++)
            for (ptrdiff_t i = 0; i < n; i++)
                gu[k * m + j] += Bm[i * m + j] * lam[i];
        for (ptrdiff_t i = 0; i < n; i++) {
            prev[i] = G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++)
                prev[i] += A[j * n + i] * lam[j];
        }
        memcpy(lam, prev, sizeof(double) * n);
    }
    memcpy(gx0, lam, sizeof(double) * n);
}

static double penalty_plain(tl_penalty p, double delta, double r, double *d)
{
    if (p == TL_PENALTY_MSE)
        return *d = 2.0 * r, r * r;
    if (p == TL_PENALTY_L1)
        return *d = (double)((r > 0.0) - (r < 0.0)), fabs(r);
    if (fabs(r) <= delta)
        return *d = r, 0.5 * r * r;
    return *d = r > 0.0 ? delta : -delta, delta * (fabs(r) - 0.5 * delta);
}

static int plain_valid(const tl_selection *sel, ptrdiff_t b, ptrdiff_t t)
{
    if (sel->lengths)
        return t < sel->lengths[b];
    return sel->mask ? sel->mask[b * sel->steps + t] != 0 : 1;
}

/* w_j = g^j |S| / sum_{s in S} g^s over the slots j with valid[j] (0 elsewhere) */
static void plain_weights(double g, ptrdiff_t len, const int *valid, double *w)
{
    double norm = 0.0, count = 0.0;
    for (ptrdiff_t j = 0; j < len; j++)
        if (valid[j])
            norm += pow(g, (double)j), count += 1.0;
    for (ptrdiff_t j = 0; j < len; j++)
        w[j] = valid[j] ? pow(g, (double)j) * count / norm : 0.0;
}

/*
 * The rollout losses of trajloss.h, written as plainly as they are
 * documented: per sequence, the rollout up to the last valid step, per-step
 * errors (mean over the dimensions of weight * rho), time weights, the means
 * over valid steps of the batch, and the gradient through the adjoint.
 * terms[0..2] = control, trajectory, terminal (0 when not computed);
 * returns the weighted total. gu (B x T x m) and gx (B x n) are written.
 */
static double plain_loss(const formed_sys *s, const tl_loss_spec *spec, const double *u,
                         const double *x0, const double *ru, const double *rs, const double *tg,
                         double terms[3], double *gu, double *gx)
{
    const ptrdiff_t n = s->n, m = s->m, B = s->B, T = s->T;
    const tl_selection *sel = &spec->sel;
    const unsigned tm = spec->terms;
    const int shift = (tm & TL_TERM_TRAJECTORY) && spec->include_initial;
    double N[3] = {0, 0, 0}, sum[3] = {0, 0, 0};
    for (ptrdiff_t b = 0; b < B; b++) {
        ptrdiff_t c = 0;
        for (ptrdiff_t t = 0; t < T; t++)
            c += plain_valid(sel, b, t);
        N[0] += (double)c;
        N[1] += c > 0 ? (double)(c + shift) : 0.0;
        N[2] += c > 0;
    }
    const double scale[3] = {spec->control_weight / N[0], spec->trajectory_weight / N[1],
                             spec->terminal_weight / N[2]};
    double *X = xmalloc(sizeof(double) * (T + 1) * n), *G = xmalloc(sizeof(double) * (T + 1) * n);
    int *valid = xmalloc(sizeof(int) * (T + 1));
    double *wc = xmalloc(sizeof(double) * (T + 1)), *wt = xmalloc(sizeof(double) * (T + 1));
    for (ptrdiff_t b = 0; b < B; b++) {
        double *gub = gu + b * T * m, *gxb = gx + b * n;
        ptrdiff_t last = -1;
        for (ptrdiff_t t = 0; t < T; t++)
            if ((valid[t] = plain_valid(sel, b, t)) != 0)
                last = t;
        memset(gub, 0, sizeof(double) * T * m), memset(gxb, 0, sizeof(double) * n);
        if (last < 0)
            continue;
        const ptrdiff_t K = last + 1;
        plain_weights(sel->discount, T, valid, wc);
        for (ptrdiff_t j = T; j >= 1; j--) /* slot j: state j, valid with control j - 1 */
            valid[j] = valid[j - 1];
        valid[0] = shift;
        plain_weights(sel->discount, T + 1, valid, wt);
        plain_rollout_one(s, b, K, x0 + b * n, u + b * T * m, X);
        memset(G, 0, sizeof(double) * (T + 1) * n);
        for (ptrdiff_t j = 0; j <= K; j++)
            for (ptrdiff_t i = 0; i < n; i++) {
                const double si = spec->state_weights ? spec->state_weights[i] : 1.0;
                double d;
                if ((tm & TL_TERM_TRAJECTORY) && valid[j]) {
                    const double r = X[j * n + i] - rs[(b * (T + 1) + j) * n + i];
                    const double e = penalty_plain(spec->penalty, spec->delta, r, &d);
                    sum[1] += wt[j] * si * e / (double)n;
                    G[j * n + i] += scale[1] * wt[j] * si * d / (double)n;
                }
                if ((tm & TL_TERM_TERMINAL) && j == K) {
                    const double goal = tg ? tg[b * n + i] : rs[(b * (T + 1) + K) * n + i];
                    const double e = penalty_plain(spec->penalty, spec->delta, X[j * n + i] - goal,
                                                   &d);
                    sum[2] += si * e / (double)n;
                    G[j * n + i] += scale[2] * si * d / (double)n;
                }
            }
        plain_adjoint_one(s, b, K, G, gub, gxb);
        for (ptrdiff_t t = 0; t < K && (tm & TL_TERM_CONTROL); t++)
            for (ptrdiff_t j = 0; j < m && plain_valid(sel, b, t); j++) {
                const double fj = spec->feature_weights ? spec->feature_weights[j] : 1.0;
                const ptrdiff_t i = (b * T + t) * m + j;
                double d;
                const double e = penalty_plain(spec->penalty, spec->delta, u[i] - ru[i], &d);
                sum[0] += wc[t] * fj * e / (double)m;
                gub[t * m + j] += scale[0] * wc[t] * fj * d / (double)m;
            }
    }
    free(X), free(G), free(valid), free(wc), free(wt);
    double total = 0.0;
    const double weight[3] = {spec->control_weight, spec->trajectory_weight,
                              spec->terminal_weight};
    for (int k = 0; k < 3; k++) {
        terms[k] = tm & (1u << k) ? sum[k] / N[k] : 0.0;
        total += tm & (1u << k) ? weight[k] * terms[k] : 0.0;
    }
    return total;
}

/* float copies of count doubles, and the doubles rounded to them */
static float *to_f32(double *x, ptrdiff_t count)
{
    float *f = xmalloc(sizeof(float) * (size_t)(count > 0 ? count : 1));
    for (ptrdiff_t i = 0; i < count; i++)
        f[i] = (float)x[i], x[i] = f[i];
    return f;
}

static void from_f32(const float *f, double *x, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        x[i] = f[i];
}

/* max |a - b| <= rel (|b| + floor max |b|) over count entries */
static int near(ptrdiff_t count, const double *a, const double *b, double rel, double floor_)
{
    double big = 0.0;
    for (ptrdiff_t i = 0; i < count; i++)
        big = fmax(big, fabs(b[i]));
    for (ptrdiff_t i = 0; i < count; i++)
        if (!(fabs(a[i] - b[i]) <= rel * (fabs(b[i]) + floor_ * big)))
            return 0;
    return 1;
}

/* The form descriptions the tests sweep: every form of A, B and c. */
static form_desc nth_form(int i)
{
    form_desc d;
    d.form[0] = i % 4, d.form[1] = (i / 4) % 4, d.form[2] = (i / 16) % 5;
    d.step_major = (i / 3) % 2, d.gap = i % 5 == 0 ? 0 : 3;
    return d;
}
enum { N_FORMS = 80 };

/* tl_dynamics_linear gives a shared system; tl_dynamics_check takes what is
 * well formed and fits the call, and refuses the rest with the documented
 * status: TL_ERR_SHAPE for sizes, TL_ERR_VALUE otherwise. */
static void test_dynamics_check(void)
{
    double A[4] = {1, 0.5, 0, 1}, Bm[2] = {0, 1}, c[2] = {0.1, 0.2};
    const tl_dynamics d = tl_dynamics_linear(2, 1, A, Bm);
    CHECK(d.kind == TL_DYN_LINEAR && d.n == 2 && d.m == 1 && d.A.data == A && d.B.data == Bm &&
              d.c.data == NULL && d.A.batch_stride == 0 && d.A.step_stride == 0 &&
              d.B.batch_stride == 0 && d.B.step_stride == 0 && d.batch == 0 && d.steps == 0 &&
              d.step == NULL && d.jacobians == NULL && d.param_jacobian == NULL &&
              d.params.data == NULL && d.nparams == 0,
          "tl_dynamics_linear: a shared linear system, reserved slots empty");
    CHECK(tl_dynamics_check(&d, 5, 3) == TL_OK && tl_dynamics_check(&d, 0, 0) == TL_OK,
          "a shared system fits any batch and steps");
    CHECK(tl_dynamics_check(NULL, 1, 1) == TL_ERR_VALUE, "NULL dynamics");
    CHECK(tl_dynamics_check(&d, -1, 1) == TL_ERR_SHAPE && tl_dynamics_check(&d, 1, -1) ==
              TL_ERR_SHAPE, "negative batch or steps");
    const ptrdiff_t bad_dims[] = {0, -1, TL_MAX_DIM + 1, PTRDIFF_MAX};
    for (size_t i = 0; i < sizeof bad_dims / sizeof bad_dims[0]; i++) {
        tl_dynamics e = d;
        e.n = bad_dims[i];
        CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_SHAPE, "n = %td", bad_dims[i]);
        e = d, e.m = bad_dims[i];
        CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_SHAPE, "m = %td", bad_dims[i]);
    }
    tl_dynamics e = d;
    e.A.data = NULL;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "no A");
    e = d, e.B.data = NULL;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "no B");
    e = d, e.kind = TL_DYN_COUNT;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "unknown kind");
    e = d, e.c.data = c;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_OK, "a shared offset");

    /* per sample: the fields that vary cover the call's batch exactly */
    e = d, e.A.batch_stride = 4, e.batch = 3;
    CHECK(tl_dynamics_check(&e, 3, 7) == TL_OK, "per-sample A over its batch");
    CHECK(tl_dynamics_check(&e, 4, 7) == TL_ERR_SHAPE && tl_dynamics_check(&e, 2, 7) ==
              TL_ERR_SHAPE, "per-sample A over another batch");
    e = d, e.c.data = c, e.c.batch_stride = 2, e.batch = 2;
    CHECK(tl_dynamics_check(&e, 2, 1) == TL_OK && tl_dynamics_check(&e, 1, 1) == TL_ERR_SHAPE,
          "per-sample offset");
    /* per step: the same with the steps */
    e = d, e.B.step_stride = 2, e.steps = 6;
    CHECK(tl_dynamics_check(&e, 1, 6) == TL_OK && tl_dynamics_check(&e, 9, 6) == TL_OK,
          "time-varying B over its steps");
    CHECK(tl_dynamics_check(&e, 1, 5) == TL_ERR_SHAPE && tl_dynamics_check(&e, 1, 7) ==
              TL_ERR_SHAPE, "time-varying B over other steps");
    e = d, e.c.data = c, e.c.step_stride = 2, e.steps = 4;
    CHECK(tl_dynamics_check(&e, 1, 4) == TL_OK && tl_dynamics_check(&e, 1, 3) == TL_ERR_SHAPE,
          "time-varying offset");
    e = d, e.A.batch_stride = 8, e.A.step_stride = 4, e.batch = 3, e.steps = 2;
    CHECK(tl_dynamics_check(&e, 3, 2) == TL_OK && tl_dynamics_check(&e, 3, 1) == TL_ERR_SHAPE &&
              tl_dynamics_check(&e, 2, 2) == TL_ERR_SHAPE, "per-sample and time-varying A");

    /* negative strides are refused, whatever the sizes say */
    for (int f = 0; f < 3; f++)
        for (int which = 0; which < 2; which++) {
            e = d, e.c.data = c, e.batch = 3, e.steps = 2;
            tl_field *field = f == 0 ? &e.A : f == 1 ? &e.B : &e.c;
            *(which ? &field->step_stride : &field->batch_stride) = -1;
            CHECK(tl_dynamics_check(&e, 3, 2) == TL_ERR_VALUE, "negative %s stride of field %d",
                  which ? "step" : "batch", f);
        }
    /* the reserved slots must stay empty for a linear system */
    e = d, e.step = (tl_step_fn)1;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "step function set");
    e = d, e.jacobians = (tl_jacobian_fn)1;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "jacobians set");
    e = d, e.param_jacobian = (tl_param_jacobian_fn)1;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "param_jacobian set");
    e = d, e.params.data = c;
    CHECK(tl_dynamics_check(&e, 1, 1) == TL_ERR_VALUE, "params set");

    /* every entry point refuses a system that does not fit, and writes nothing */
    double x0[4] = {1, 2, 3, 4}, u[24] = {0}, S[40], gu[24], gx[4], err[4], tg[4] = {0};
    double rs[40] = {0};
    void *work = xmalloc(tl_rollout_work_bytes(2, 1));
    e = d, e.A.batch_stride = 4, e.batch = 3; /* covers 3 samples, the calls have 2 */
    memset(S, 0xA5, sizeof S), memset(gu, 0xA5, sizeof gu), memset(err, 0xA5, sizeof err);
    CHECK(tl_rollout(&e, TL_F64, 2, 3, x0, u, S, work) == TL_ERR_SHAPE, "rollout, batch 2 of 3");
    CHECK(tl_rollout_vjp(&e, TL_F64, 2, 3, x0, u, S, gu, gx, work) == TL_ERR_SHAPE,
          "vjp, batch 2 of 3");
    CHECK(tl_final_state_error(&e, TL_F64, 2, 3, NULL, u, x0, tg, err, work) == TL_ERR_SHAPE,
          "final_state_error, batch 2 of 3");
    CHECK(untouched(gu, sizeof gu, 0xA5) && untouched(err, sizeof err, 0xA5),
          "a refused call wrote");
    e = d, e.B.step_stride = 2, e.steps = 4; /* covers 4 steps, the calls have 3 */
    CHECK(tl_rollout(&e, TL_F64, 2, 3, x0, u, S, work) == TL_ERR_SHAPE, "rollout, 3 steps of 4");
    CHECK(untouched(S, sizeof S, 0xA5), "a refused rollout wrote");
    tl_loss_spec spec = basic_spec(2, 3, 7u);
    size_t bytes = tl_loss_work_bytes(&d, 0, &spec);
    void *lwork = xmalloc(bytes);
    tl_loss_value v;
    const tl_loss_io io = {TL_F64, u, x0, u, rs, tg, gu, gx};
    CHECK(tl_rollout_loss(&e, &spec, &io, &v, lwork) == TL_ERR_SHAPE, "loss, 3 steps of 4");
    CHECK(untouched(gu, sizeof gu, 0xA5), "a refused loss wrote");
    e = d, e.jacobians = (tl_jacobian_fn)1;
    CHECK(tl_rollout_loss(&e, &spec, &io, &v, lwork) == TL_ERR_VALUE, "loss, reserved slot set");
    free(work), free(lwork);
}

/* Rollout, adjoint and final-state error for every form of system, both
 * dtypes, against plain loops over each sample's matrices at each step; the
 * adjoint also by the identity <vjp(G), (du, dx0)> = <G, J (du, dx0)>,
 * J (du, dx0) the rollout of (du, dx0) without the offset. */
static void test_rollout_forms(void)
{
    unsigned seed = 99u;
    const ptrdiff_t dims[3][2] = {{3, 2}, {1, 1}, {4, 3}};
    for (int f = 0; f < N_FORMS; f++) {
        const form_desc d = nth_form(f);
        const ptrdiff_t n = dims[f % 3][0], m = dims[f % 3][1], B = 5, T = 4;
        const ptrdiff_t nx = B * n, nu = B * T * m, ns = B * (T + 1) * n;
        formed_sys s;
        formed_init(&s, &d, n, m, B, T, &seed);
        double *x0 = xmalloc(sizeof(double) * nx), *u = xmalloc(sizeof(double) * nu);
        double *xf = xmalloc(sizeof(double) * nx), *G = xmalloc(sizeof(double) * ns);
        double *S = xmalloc(sizeof(double) * ns), *R = xmalloc(sizeof(double) * ns);
        double *gu = xmalloc(sizeof(double) * nu), *gx = xmalloc(sizeof(double) * nx);
        double *rgu = xmalloc(sizeof(double) * nu), *rgx = xmalloc(sizeof(double) * nx);
        double err[5], rerr[5];
        int64_t len[5];
        void *work = xmalloc(tl_rollout_work_bytes(n, m));
        for (ptrdiff_t i = 0; i < nx; i++)
            x0[i] = uniform(&seed), xf[i] = uniform(&seed);
        for (ptrdiff_t i = 0; i < nu; i++)
            u[i] = uniform(&seed);
        for (ptrdiff_t i = 0; i < ns; i++)
            G[i] = uniform(&seed);
        for (ptrdiff_t b = 0; b < B; b++)
            len[b] = (int64_t)((b + f) % (T + 1));
        char what[160];
        snprintf(what, sizeof what, "A %s, B %s, c %s, %s, gap %d, n=%td m=%td",
                 form_name(d.form[0]), form_name(d.form[1]), form_name(d.form[2]),
                 d.step_major ? "step-major" : "batch-major", d.gap, n, m);

        for (int dt = 0; dt < 2; dt++) {
            const int f32 = dt == 1;
            float *x0f = NULL, *uf = NULL, *xff = NULL, *Gf = NULL;
            if (f32)
                x0f = to_f32(x0, nx), uf = to_f32(u, nu), xff = to_f32(xf, nx), Gf = to_f32(G, ns);
            const double rel = f32 ? 2e-6 : 1e-14;
            /* the references, from the (rounded) inputs */
            memset(rgu, 0, sizeof(double) * nu);
            for (ptrdiff_t b = 0; b < B; b++) {
                plain_rollout_one(&s, b, T, x0 + b * n, u + b * T * m, R + b * (T + 1) * n);
                plain_adjoint_one(&s, b, T, G + b * (T + 1) * n, rgu + b * T * m, rgx + b * n);
                double X[5 * 4], sq = 0.0;
                plain_rollout_one(&s, b, (ptrdiff_t)len[b], x0 + b * n, u + b * T * m, X);
                for (ptrdiff_t i = 0; i < n; i++)
                    sq += (X[len[b] * n + i] - xf[b * n + i]) * (X[len[b] * n + i] - xf[b * n + i]);
                rerr[b] = sqrt(sq);
            }
            tl_status st[3];
            if (f32) {
                float *Sf = xmalloc(sizeof(float) * ns), *guf = xmalloc(sizeof(float) * nu);
                float *gxf = xmalloc(sizeof(float) * nx), ef[5];
                st[0] = tl_rollout(&s.dyn, TL_F32, B, T, x0f, uf, Sf, work);
                st[1] = tl_rollout_vjp(&s.dyn, TL_F32, B, T, x0f, uf, Gf, guf, gxf, work);
                st[2] = tl_final_state_error(&s.dyn, TL_F32, B, T, len, uf, x0f, xff, ef, work);
                from_f32(Sf, S, ns), from_f32(guf, gu, nu), from_f32(gxf, gx, nx);
                from_f32(ef, err, B);
                free(Sf), free(guf), free(gxf);
            } else {
                st[0] = tl_rollout(&s.dyn, TL_F64, B, T, x0, u, S, work);
                st[1] = tl_rollout_vjp(&s.dyn, TL_F64, B, T, NULL, NULL, G, gu, gx, work);
                st[2] = tl_final_state_error(&s.dyn, TL_F64, B, T, len, u, x0, xf, err, work);
            }
            CHECK(st[0] == TL_OK && near(ns, S, R, rel, 1.0), "rollout %s %s",
                  f32 ? "f32" : "f64", what);
            CHECK(st[1] == TL_OK && near(nu, gu, rgu, rel, 1.0) && near(nx, gx, rgx, rel, 1.0),
                  "vjp %s %s", f32 ? "f32" : "f64", what);
            CHECK(st[2] == TL_OK && near(B, err, rerr, rel * 10, 1.0),
                  "final_state_error %s %s", f32 ? "f32" : "f64", what);
            free(x0f), free(uf), free(xff), free(Gf);
        }

        /* the adjoint identity, in float64 */
        formed_sys lin = s;
        lin.c = NULL;
        double *du = xmalloc(sizeof(double) * nu), *dx = xmalloc(sizeof(double) * nx);
        for (ptrdiff_t i = 0; i < nu; i++)
            du[i] = uniform(&seed);
        for (ptrdiff_t i = 0; i < nx; i++)
            dx[i] = uniform(&seed);
        CHECK(tl_rollout_vjp(&s.dyn, TL_F64, B, T, x0, u, G, gu, gx, work) == TL_OK, "vjp");
        double lhs = 0.0, rhs = 0.0, mag = 0.0;
        for (ptrdiff_t b = 0; b < B; b++)
            plain_rollout_one(&lin, b, T, dx + b * n, du + b * T * m, R + b * (T + 1) * n);
        for (ptrdiff_t i = 0; i < nu; i++)
            lhs += gu[i] * du[i], mag += fabs(gu[i] * du[i]);
        for (ptrdiff_t i = 0; i < nx; i++)
            lhs += gx[i] * dx[i], mag += fabs(gx[i] * dx[i]);
        for (ptrdiff_t i = 0; i < ns; i++)
            rhs += G[i] * R[i], mag += fabs(G[i] * R[i]);
        CHECK(fabs(lhs - rhs) <= 1e-14 * mag, "<vjp(G), d> = <G, J d>: %.17g vs %.17g, %s", lhs,
              rhs, what);
        free(du), free(dx);
        free(x0), free(u), free(xf), free(G), free(S), free(R), free(gu), free(gx), free(rgu);
        free(rgx), free(work);
        formed_free(&s);
    }
}

/* Random loss inputs for a formed system, with NaN wherever the call must not
 * read (controls after each sequence's last valid step, references at steps
 * not scored, x0 and target of a sequence with no valid step). */
typedef struct {
    double *u, *x0, *ru, *rs, *tg, *fw, *sw;
} loss_data;

static void loss_data_init(loss_data *L, const formed_sys *s, const tl_loss_spec *spec,
                           unsigned *seed)
{
    const ptrdiff_t n = s->n, m = s->m, B = s->B, T = s->T;
    L->u = xmalloc(sizeof(double) * B * T * m), L->ru = xmalloc(sizeof(double) * B * T * m);
    L->x0 = xmalloc(sizeof(double) * B * n), L->tg = xmalloc(sizeof(double) * B * n);
    L->rs = xmalloc(sizeof(double) * B * (T + 1) * n);
    L->fw = xmalloc(sizeof(double) * m), L->sw = xmalloc(sizeof(double) * n);
    for (ptrdiff_t j = 0; j < m; j++)
        L->fw[j] = 0.5 + uniform(seed) * uniform(seed);
    for (ptrdiff_t i = 0; i < n; i++)
        L->sw[i] = 0.5 + uniform(seed) * uniform(seed);
    const int shift = (spec->terms & TL_TERM_TRAJECTORY) && spec->include_initial;
    for (ptrdiff_t b = 0; b < B; b++) {
        ptrdiff_t last = -1;
        for (ptrdiff_t t = 0; t < T; t++)
            last = plain_valid(&spec->sel, b, t) ? t : last;
        for (ptrdiff_t i = 0; i < n; i++) {
            L->x0[b * n + i] = last < 0 ? NAN : uniform(seed);
            L->tg[b * n + i] = last < 0 ? NAN : uniform(seed);
        }
        for (ptrdiff_t t = 0; t < T; t++)
            for (ptrdiff_t j = 0; j < m; j++) {
                const ptrdiff_t i = (b * T + t) * m + j;
                L->u[i] = t > last ? NAN : uniform(seed);
                L->ru[i] = plain_valid(&spec->sel, b, t) ? uniform(seed) : NAN;
            }
        for (ptrdiff_t k = 0; k <= T; k++) { /* state k: scored, or the final valid state */
            const int scored = k == 0 ? shift && last >= 0
                                      : plain_valid(&spec->sel, b, k - 1) || k == last + 1;
            for (ptrdiff_t i = 0; i < n; i++)
                L->rs[(b * (T + 1) + k) * n + i] = scored ? uniform(seed) : NAN;
        }
    }
}

static void loss_data_free(loss_data *L)
{
    free(L->u), free(L->x0), free(L->ru), free(L->rs), free(L->tg), free(L->fw), free(L->sw);
}

/* One rollout-loss call in the given dtype; value and gradients come back in
 * double (the float32 inputs are L's values rounded, and L is rounded too). */
static tl_status run_loss(const formed_sys *s, const tl_loss_spec *spec, loss_data *L,
                          int f32, int with_target, tl_loss_value *v, double *gu, double *gx)
{
    const ptrdiff_t n = s->n, m = s->m, B = s->B, T = s->T;
    const ptrdiff_t nu = B * T * m, nx = B * n, ns = B * (T + 1) * n;
    void *work = xmalloc(tl_loss_work_bytes(&s->dyn, 0, spec));
    tl_status st;
    if (f32) {
        float *u = to_f32(L->u, nu), *x0 = to_f32(L->x0, nx), *ru = to_f32(L->ru, nu);
        float *rs = to_f32(L->rs, ns), *tg = to_f32(L->tg, nx);
        float *guf = xmalloc(sizeof(float) * nu), *gxf = xmalloc(sizeof(float) * nx);
        const tl_loss_io io = {TL_F32, u, x0, ru, rs, with_target ? tg : NULL, guf, gxf};
        st = tl_rollout_loss(&s->dyn, spec, &io, v, work);
        from_f32(guf, gu, nu), from_f32(gxf, gx, nx);
        free(u), free(x0), free(ru), free(rs), free(tg), free(guf), free(gxf);
    } else {
        const tl_loss_io io = {TL_F64, L->u, L->x0, L->ru, L->rs, with_target ? L->tg : NULL,
                               gu, gx};
        st = tl_rollout_loss(&s->dyn, spec, &io, v, work);
    }
    free(work);
    return st;
}

/* Do value v and gradients (gu, gx) match the plain loop's, to rel? */
static int loss_matches(const formed_sys *s, const tl_loss_spec *spec, const loss_data *L,
                        int with_target, const tl_loss_value *v, const double *gu,
                        const double *gx, double rel)
{
    const ptrdiff_t nu = s->B * s->T * s->m, nx = s->B * s->n;
    double terms[3], *rgu = xmalloc(sizeof(double) * nu), *rgx = xmalloc(sizeof(double) * nx);
    const double total = plain_loss(s, spec, L->u, L->x0, L->ru, L->rs,
                                    with_target ? L->tg : NULL, terms, rgu, rgx);
    const double got[4] = {v->total, v->control, v->trajectory, v->terminal};
    const double want[4] = {total, terms[0], terms[1], terms[2]};
    int ok = near(4, got, want, rel, 0.0) && !v->nonfinite;
    ok &= near(nu, gu, rgu, rel, 1e-2) && near(nx, gx, rgx, rel, 1e-2);
    if (!ok)
        printf("  value %.17g (%.17g %.17g %.17g), plain loop %.17g (%.17g %.17g %.17g)\n",
               v->total, v->control, v->trajectory, v->terminal, total, terms[0], terms[1],
               terms[2]);
    free(rgu), free(rgx);
    return ok;
}

/*
 * Every loss term alone and together, for systems of every kind, each
 * selection (all steps, lengths, a mask), discounts, include_initial, the
 * three penalties, a target or the final reference state, feature and state
 * weights, both dtypes and both kernels, against plain_loss; padding holds
 * NaN throughout (loss_data_init).
 */
static void test_loss_forms(void)
{
    static const int forms[] = {64, 21, 42, 63, 70, 0};
    static const unsigned term_sets[] = {TL_TERM_CONTROL, TL_TERM_TRAJECTORY, TL_TERM_TERMINAL,
                                         7u, TL_TERM_TRAJECTORY | TL_TERM_TERMINAL};
    const ptrdiff_t n = 3, m = 2, B = 9, T = 5;
    const int64_t lengths[9] = {5, 2, 0, 4, 5, 1, 3, 5, 2};
    unsigned char mask[9 * 5];
    unsigned seed = 31u;
    for (ptrdiff_t i = 0; i < B * T; i++)
        mask[i] = (unsigned char)(i / T == 4 ? 0 : uniform(&seed) > -0.3 ? 1 + i % 3 : 0);
    int variant = 0;
    for (size_t fi = 0; fi < sizeof forms / sizeof forms[0]; fi++) {
        const form_desc d = nth_form(forms[fi]);
        formed_sys s;
        formed_init(&s, &d, n, m, B, T, &seed);
        for (int sel = 0; sel < 3; sel++)
            for (size_t ti = 0; ti < sizeof term_sets / sizeof term_sets[0]; ti++)
                for (int rep = 0; rep < 2; rep++, variant++) {
                    tl_loss_spec spec = basic_spec(B, T, term_sets[ti]);
                    spec.sel.lengths = sel == 1 ? lengths : NULL;
                    spec.sel.mask = sel == 2 ? mask : NULL;
                    spec.sel.discount = variant % 3 == 0 ? 1.0 : variant % 3 == 1 ? 0.8 : 1.25;
                    spec.include_initial = (variant / 3) % 2;
                    spec.penalty = (tl_penalty)(variant % TL_PENALTY_COUNT);
                    spec.delta = 0.3;
                    const int with_target = (variant / 2) % 2;
                    loss_data L;
                    loss_data_init(&L, &s, &spec, &seed);
                    spec.feature_weights = variant % 4 == 1 ? L.fw : NULL;
                    spec.state_weights = variant % 4 == 2 ? L.sw : NULL;
                    for (int dt = 0; dt < 2; dt++)
                        for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++) {
                            spec.kernel = (tl_kernel)kernel;
                            double gu[9 * 5 * 2], gx[9 * 3];
                            tl_loss_value v;
                            const tl_status st = run_loss(&s, &spec, &L, dt, with_target, &v, gu,
                                                          gx);
                            CHECK(st == TL_OK && loss_matches(&s, &spec, &L, with_target, &v, gu,
                                                              gx, dt ? 1e-4 : 1e-12),
                                  "loss %s: terms %u, %s, discount %g, include_initial %d, "
                                  "penalty %d, target %d, weights %d, %s, kernel %d: status %d",
                                  form_name(d.form[0]), spec.terms,
                                  sel == 0 ? "all" : sel == 1 ? "lengths" : "mask",
                                  spec.sel.discount, spec.include_initial, (int)spec.penalty,
                                  with_target, variant % 4, dt ? "f32" : "f64", kernel, (int)st);
                        }
                    loss_data_free(&L);
                }
        formed_free(&s);
    }
}

/* The gradient of the rollout loss of a per-sample, time-varying system
 * with an offset, against central differences of its value. */
static void test_loss_forms_fd(void)
{
    unsigned seed = 5u;
    const ptrdiff_t n = 3, m = 2, B = 3, T = 4;
    const int64_t lengths[3] = {4, 2, 3};
    formed_sys s;
    const form_desc d = nth_form(63);
    formed_init(&s, &d, n, m, B, T, &seed);
    for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++) {
        tl_loss_spec spec = basic_spec(B, T, 7u);
        spec.sel.lengths = lengths, spec.sel.discount = 0.7, spec.include_initial = 1;
        spec.kernel = (tl_kernel)kernel;
        loss_data L;
        loss_data_init(&L, &s, &spec, &seed);
        double gu[3 * 4 * 2], gx[3 * 3], gdummy[3 * 4 * 2 + 3 * 3];
        tl_loss_value v, vp, vm;
        CHECK(run_loss(&s, &spec, &L, 0, 1, &v, gu, gx) == TL_OK, "fd base");
        double worst = 0.0;
        for (ptrdiff_t i = 0; i < B * T * m + B * n; i++) {
            double *p = i < B * T * m ? L.u + i : L.x0 + (i - B * T * m);
            if (isnan(*p)) /* padding */
                continue;
            const double keep = *p, h = 1e-6;
            *p = keep + h;
            run_loss(&s, &spec, &L, 0, 1, &vp, gdummy, gdummy + B * T * m);
            *p = keep - h;
            run_loss(&s, &spec, &L, 0, 1, &vm, gdummy, gdummy + B * T * m);
            *p = keep;
            const double fd = (vp.total - vm.total) / (2 * h);
            const double an = i < B * T * m ? gu[i] : gx[i - B * T * m];
            worst = fmax(worst, fabs(fd - an));
        }
        CHECK(worst < 1e-8, "kernel %d: gradient vs finite differences %g", kernel, worst);
        loss_data_free(&L);
    }
    formed_free(&s);
}

/*
 * The fast path (TL_KERNEL_AUTO) and the plain kernel (TL_KERNEL_REFERENCE)
 * agree to rounding with each other and with plain_loss, at batch sizes on
 * and off the tile width; each is bit-for-bit the same with 1 and 2 threads,
 * and with a pool.
 */
static void test_loss_kernels(void)
{
    static const ptrdiff_t batches[] = {1, 7, 8, 9, 64, 300, 1030};
    static const ptrdiff_t dims[][2] = {{2, 1}, {3, 2}, {5, 2}};
    static const int forms[] = {64, 0, 21, 42, 63};
    const ptrdiff_t T = 6;
    unsigned seed = 8u;
    tl_pool *pool = xmalloc(tl_pool_bytes());
    CHECK(tl_pool_init(pool) == TL_OK, "pool");
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t fi = 0; fi < sizeof forms / sizeof forms[0]; fi++) {
                const ptrdiff_t B = batches[bi], n = dims[di][0], m = dims[di][1];
                const ptrdiff_t nu = B * T * m, nx = B * n;
                const form_desc d = nth_form(forms[fi]);
                formed_sys s;
                formed_init(&s, &d, n, m, B, T, &seed);
                int64_t *len = xmalloc(sizeof(int64_t) * B);
                for (ptrdiff_t b = 0; b < B; b++)
                    len[b] = (int64_t)((b * 5 + 3) % (T + 1));
                const int variant = (int)(bi + di + fi);
                tl_loss_spec spec = basic_spec(B, T, 7u);
                spec.sel.lengths = variant % 3 == 2 ? NULL : len;
                spec.sel.discount = variant % 2 ? 0.9 : 1.0;
                spec.include_initial = variant % 4 < 2;
                spec.penalty = (tl_penalty)(variant % TL_PENALTY_COUNT), spec.delta = 0.4;
                const int with_target = variant % 2;
                loss_data L;
                loss_data_init(&L, &s, &spec, &seed);
                for (int dt = 0; dt < 2; dt++) {
                    double *gu[5], *gx[5];
                    tl_loss_value v[5];
                    int ok = 1;
                    for (int r = 0; r < 5; r++) { /* REF 1, REF 2, AUTO 1, AUTO 2, AUTO 2 pool */
                        gu[r] = xmalloc(sizeof(double) * nu), gx[r] = xmalloc(sizeof(double) * nx);
                        spec.kernel = r < 2 ? TL_KERNEL_REFERENCE : TL_KERNEL_AUTO;
                        spec.threads = r == 0 || r == 2 ? 1 : 2;
                        spec.pool = r == 4 ? pool : NULL;
                        ok &= run_loss(&s, &spec, &L, dt, with_target, &v[r], gu[r], gx[r]) ==
                              TL_OK;
                    }
                    const double rel = dt ? 1e-4 : 1e-12;
                    char what[160];
                    snprintf(what, sizeof what, "B=%td n=%td m=%td A %s, B %s, c %s, %s",
                             B, n, m, form_name(d.form[0]), form_name(d.form[1]),
                             form_name(d.form[2]), dt ? "f32" : "f64");
                    CHECK(ok && loss_matches(&s, &spec, &L, with_target, &v[0], gu[0], gx[0], rel),
                          "reference kernel vs plain loop, %s", what);
                    CHECK(ok && loss_matches(&s, &spec, &L, with_target, &v[2], gu[2], gx[2], rel),
                          "auto kernel vs plain loop, %s", what);
                    const double a4[4] = {v[2].total, v[2].control, v[2].trajectory,
                                          v[2].terminal};
                    const double b4[4] = {v[0].total, v[0].control, v[0].trajectory,
                                          v[0].terminal};
                    CHECK(near(4, a4, b4, dt ? 1e-4 : 1e-13, 0.0) &&
                              near(nu, gu[2], gu[0], dt ? 1e-4 : 1e-12, 1e-2) &&
                              near(nx, gx[2], gx[0], dt ? 1e-4 : 1e-12, 1e-2),
                          "auto vs reference kernel to rounding, %s", what);
                    static const int pairs[3][2] = {{1, 0}, {3, 2}, {4, 2}};
                    for (int q = 0; q < 3; q++) {
                        const int r = pairs[q][0], base = pairs[q][1];
                        CHECK(same_value(&v[r], &v[base]) &&
                                  memcmp(gu[r], gu[base], sizeof(double) * nu) == 0 &&
                                  memcmp(gx[r], gx[base], sizeof(double) * nx) == 0,
                              "%s kernel%s: 2 threads bit for bit 1 thread, %s",
                              r == 1 ? "reference" : "auto", r == 4 ? " with a pool" : "", what);
                    }
                    for (int r = 0; r < 5; r++)
                        free(gu[r]), free(gx[r]);
                }
                loss_data_free(&L);
                free(len);
                formed_free(&s);
            }
    tl_pool_stop(pool);
    free(pool);
}

/* Either gradient may be NULL: the value and the other gradient are the
 * same bits as with both; and a call with no valid step is TL_ERR_EMPTY
 * (no steps, no sequences, or every length 0). Both kernels, both dtypes. */
/* A control-only rollout loss never reads the system: a NaN in A changes
 * nothing (the gradient is 2 (u - ru) / (T m), the control loss's). */
static void test_control_only_ignores_system(void)
{
    double An[4] = {1, NAN, 0, 1}, Bd[2] = {0, 0.1};
    double u[3] = {1, 2, 3}, ru[3] = {0, 0, 0}, x0[2] = {0, 0}, gu[3], gx[2];
    for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++) {
        tl_dynamics dn = tl_dynamics_linear(2, 1, An, Bd);
        tl_loss_spec spec = {{1, 3, NULL, NULL, 1.0}, TL_PENALTY_MSE, 1.0, TL_TERM_CONTROL, 1.0,
                             0.0, 0.0, 0, NULL, NULL, 1, 0, (tl_kernel)kernel, NULL};
        tl_loss_io io = {TL_F64, u, x0, ru, NULL, NULL, gu, gx};
        tl_loss_value v;
        void *w = xmalloc(tl_loss_work_bytes(&dn, 0, &spec));
        const tl_status st = tl_rollout_loss(&dn, &spec, &io, &v, w);
        CHECK(st == TL_OK && fabs(v.total - 14.0 / 3.0) < 1e-15, "control-only value %g", v.total);
        for (int k = 0; k < 3; k++)
            CHECK(fabs(gu[k] - 2.0 * (k + 1) / 3.0) < 1e-15, "control-only grad[%d] %g", k, gu[k]);
        CHECK(gx[0] == 0.0 && gx[1] == 0.0, "control-only grad_x0 %g %g", gx[0], gx[1]);
        free(w);
    }
}

static void test_loss_optional_outputs(void)
{
    unsigned seed = 71u;
    const ptrdiff_t n = 3, m = 2, B = 11, T = 4;
    const form_desc d = nth_form(63);
    formed_sys s;
    formed_init(&s, &d, n, m, B, T, &seed);
    int ok = 1;
    for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++)
        for (int f32 = 0; f32 < 2; f32++) {
            tl_loss_spec spec = basic_spec(B, T, 7u);
            spec.kernel = (tl_kernel)kernel, spec.include_initial = 1, spec.sel.discount = 0.9;
            loss_data L;
            loss_data_init(&L, &s, &spec, &seed);
            const size_t es = f32 ? sizeof(float) : sizeof(double);
            void *u = xmalloc(es * B * T * m), *x0 = xmalloc(es * B * n);
            void *ru = xmalloc(es * B * T * m), *rs = xmalloc(es * B * (T + 1) * n);
            for (ptrdiff_t i = 0; i < B * T * m; i++) {
                if (f32)
                    ((float *)u)[i] = (float)L.u[i], ((float *)ru)[i] = (float)L.ru[i];
                else
                    ((double *)u)[i] = L.u[i], ((double *)ru)[i] = L.ru[i];
            }
            for (ptrdiff_t i = 0; i < B * n; i++) {
                if (f32)
                    ((float *)x0)[i] = (float)L.x0[i];
                else
                    ((double *)x0)[i] = L.x0[i];
            }
            for (ptrdiff_t i = 0; i < B * (T + 1) * n; i++) {
                if (f32)
                    ((float *)rs)[i] = (float)L.rs[i];
                else
                    ((double *)rs)[i] = L.rs[i];
            }
            void *gu[2] = {xmalloc(es * B * T * m), xmalloc(es * B * T * m)};
            void *gx[2] = {xmalloc(es * B * n), xmalloc(es * B * n)};
            void *work = xmalloc(tl_loss_work_bytes(&s.dyn, 0, &spec));
            tl_loss_io io = {f32 ? TL_F32 : TL_F64, u, x0, ru, rs, NULL, gu[0], gx[0]};
            tl_loss_value v0, v;
            ok &= tl_rollout_loss(&s.dyn, &spec, &io, &v0, work) == TL_OK;
            io.grad_controls = NULL, io.grad_x0 = gx[1];
            ok &= tl_rollout_loss(&s.dyn, &spec, &io, &v, work) == TL_OK && same_value(&v, &v0) &&
                  memcmp(gx[0], gx[1], es * B * n) == 0;
            io.grad_controls = gu[1], io.grad_x0 = NULL;
            ok &= tl_rollout_loss(&s.dyn, &spec, &io, &v, work) == TL_OK && same_value(&v, &v0) &&
                  memcmp(gu[0], gu[1], es * B * T * m) == 0;
            io.grad_controls = NULL;
            ok &= tl_rollout_loss(&s.dyn, &spec, &io, &v, work) == TL_OK && same_value(&v, &v0);
            /* the control loss without its gradient */
            tl_loss_spec cs = spec;
            cs.terms = TL_TERM_CONTROL;
            void *cw = xmalloc(tl_loss_work_bytes(NULL, m, &cs));
            tl_loss_io cio = {io.dtype, u, NULL, ru, NULL, NULL, gu[0], NULL};
            ok &= tl_control_loss(&cs, m, &cio, &v0, cw) == TL_OK;
            cio.grad_controls = NULL;
            ok &= tl_control_loss(&cs, m, &cio, &v, cw) == TL_OK && same_value(&v, &v0);
            /* no valid step */
            const int64_t zeros[11] = {0};
            tl_loss_spec empty = spec;
            empty.sel.lengths = zeros;
            ok &= tl_rollout_loss(&s.dyn, &empty, &io, &v, work) == TL_ERR_EMPTY;
            ok &= tl_control_loss(&empty, m, &cio, &v, cw) == TL_ERR_EMPTY;
            free(u), free(x0), free(ru), free(rs), free(gu[0]), free(gu[1]), free(gx[0]);
            free(gx[1]), free(work), free(cw);
            loss_data_free(&L);
        }
    CHECK(ok, "NULL gradients leave the value and the other gradient unchanged; no valid step "
              "is TL_ERR_EMPTY");
    /* no sequences, and sequences of no steps, over a shared system */
    double Ad[4] = {1, 0.1, 0, 1}, Bd[2] = {0, 0.1}, z[4] = {0};
    const tl_dynamics sys = tl_dynamics_linear(2, 1, Ad, Bd);
    tl_loss_value v;
    tl_loss_spec none = basic_spec(0, 3, 7u), nosteps = basic_spec(2, 0, 7u);
    void *w0 = xmalloc(tl_loss_work_bytes(&sys, 0, &none));
    void *w1 = xmalloc(tl_loss_work_bytes(&sys, 0, &nosteps));
    const tl_loss_io io = {TL_F64, z, z, z, z, NULL, NULL, NULL};
    CHECK(tl_rollout_loss(&sys, &none, &io, &v, w0) == TL_ERR_EMPTY &&
              tl_rollout_loss(&sys, &nosteps, &io, &v, w1) == TL_ERR_EMPTY,
          "an empty batch and sequences of no steps are TL_ERR_EMPTY");
    free(w0), free(w1);
    formed_free(&s);
}

/* Scratch for tl_ref_plan_init with any method and then tl_ref_apply. */
static size_t ref_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps)
{
    size_t most = 0;
    for (int method = 0; method < TL_REF_COUNT; method++) {
        const size_t b = tl_ref_init_work_bytes(n, m, steps, (tl_ref_method)method);
        most = b > most ? b : most;
    }
    return most + tl_ref_apply_work_bytes(n, m);
}

/* min-energy references for one double-integrator sample, by method */
static tl_status di_reference(tl_ref_method method, double dt, ptrdiff_t T, const double *x0,
                              const double *xf, double *u, double *S, double *err,
                              double *energy, double *cond)
{
    const double A[4] = {0, 1, 0, 0}, B[2] = {0, 1};
    double Ad[4] = {1, dt, 0, 1}, Bd[2] = {dt * dt / 2, dt};
    const tl_dynamics sys = tl_dynamics_linear(2, 1, Ad, Bd);
    void *mem = xmalloc(tl_ref_plan_bytes(2, 1, T, method));
    void *work = xmalloc(ref_work_bytes(2, 1, T));
    tl_ref_plan plan;
    tl_status status = tl_ref_plan_init(&plan, mem, method, &sys, 0, A, B, dt, T, work);
    *cond = plan.cond;
    if (status == TL_OK)
        status = tl_ref_apply(&plan, 1, x0, xf, u, S, err, energy, work);
    free(mem), free(work);
    return status;
}

static void test_references(void)
{
    const ptrdiff_t T = 15;
    const double dt = 1.0 / 3.0, H = T * dt, x0[2] = {3.0, 1.0}, xf[2] = {0.0, 0.0};
    double u[15], S[32], err, energy, cond;

    CHECK(di_reference(TL_REF_EXACT, dt, T, x0, xf, u, S, &err, &energy, &cond) == TL_OK,
          "exact status");
    CHECK(err < 1e-13 && fabs(S[30]) < 1e-13 && fabs(S[31]) < 1e-13, "exact reaches xf: %g", err);
    CHECK(cond > 1.0 && cond < 100.0, "equilibrated condition %g", cond);

    /* closed form of the continuous law u(t) = a + b t from (3, 1) to the origin:
     * v0 + a H + b H^2/2 = 0 and p0 + v0 H + a H^2/2 + b H^3/6 = 0 */
    const double p0 = x0[0], v0 = x0[1];
    const double det = H * H * H * H / 6 - H * H * H * H / 4;
    const double r1 = -v0, r2 = -(p0 + v0 * H);
    const double a = (r1 * H * H * H / 6 - H * H / 2 * r2) / det;
    const double b = (H * r2 - H * H / 2 * r1) / det;
    CHECK(di_reference(TL_REF_AVERAGE, dt, T, x0, xf, u, S, &err, &energy, &cond) == TL_OK,
          "average status");
    double worst = 0.0, e_sum = 0.0;
    for (ptrdiff_t k = 0; k < T; k++) {
        worst = fmax(worst, fabs(u[k] - (a + b * (k + 0.5) * dt)));
        e_sum += u[k] * u[k] * dt;
    }
    CHECK(worst < 1e-13, "average controls vs a + b t_mid: %g", worst);
    CHECK(fabs(err - fabs(b) * H * dt * dt / 12) < 1e-13, "average error %.17g vs |b| H dt^2/12 %.17g",
          err, fabs(b) * H * dt * dt / 12);
    CHECK(fabs(energy - e_sum) < 1e-12, "energy");

    CHECK(di_reference(TL_REF_CONTINUOUS, dt, T, x0, xf, u, S, &err, &energy, &cond) == TL_OK,
          "continuous status");
    /* the continuous optimum at t = 1: p = p0 + v0 t + a t^2/2 + b t^3/6 */
    const double t3 = 3 * dt, p3 = p0 + v0 * t3 + a * t3 * t3 / 2 + b * t3 * t3 * t3 / 6;
    CHECK(fabs(S[2 * 3] - p3) < 1e-12 && fabs(S[30]) < 1e-13, "continuous states %g vs %g",
          S[6], p3);

    /* uncontrollable: one step cannot steer two states with one input */
    CHECK(di_reference(TL_REF_EXACT, dt, 1, x0, xf, u, S, &err, &energy, &cond) ==
              TL_ERR_SINGULAR && isinf(cond), "one step is uncontrollable");
    double Ad[4] = {1, 0, 0, 1}, Bd[2] = {1, 0};
    const tl_dynamics stuck = tl_dynamics_linear(2, 1, Ad, Bd);
    void *mem = xmalloc(tl_ref_plan_bytes(2, 1, 5, TL_REF_EXACT));
    void *work = xmalloc(ref_work_bytes(2, 1, 5));
    tl_ref_plan plan;
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &stuck, 0, NULL, NULL, 1.0, 5, work) ==
              TL_ERR_SINGULAR, "second state unreachable");
    /* C = [1 1 1 1 1; 0 0 0 0 0]: rank 1 of 2, R_11 = 1 after equilibration
     * (|row| = sqrt(5) scaled to 1), R_22 = 0 */
    CHECK(plan.rank.rank == 1 && fabs(plan.rank.r_first - 1.0) < 1e-15 &&
              plan.rank.r_next == 0.0 && fabs(plan.rank.tol - 5 * DBL_EPSILON) < 1e-30,
          "rank report: rank %td, |R_11| %g, first refused %g, tol %g", plan.rank.rank,
          plan.rank.r_first, plan.rank.r_next, plan.rank.tol);
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_AVERAGE, &stuck, 0, NULL, NULL, 1.0, 5, work) ==
              TL_ERR_VALUE, "average needs A, B");
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &stuck, 0, NULL, NULL, 1.0, 0, work) ==
              TL_ERR_SHAPE, "zero steps");
    free(mem), free(work);

    /* the law at arbitrary times matches the closed form */
    const double A[4] = {0, 1, 0, 0}, Bc[2] = {0, 1}, times[3] = {0.0, 1.234, H};
    double ul[3], xl[6];
    tl_law_info linfo;
    void *lw = xmalloc(tl_min_energy_law_work_bytes(2, 1));
    CHECK(tl_min_energy_law(2, 1, A, Bc, H, 1, x0, xf, 3, times, ul, xl, &linfo, lw) == TL_OK,
          "law status");
    worst = 0.0;
    for (int q = 0; q < 3; q++) {
        const double t = times[q];
        worst = fmax(worst, fabs(ul[q] - (a + b * t)));
        worst = fmax(worst, fabs(xl[2 * q] - (p0 + v0 * t + a * t * t / 2 + b * t * t * t / 6)));
        worst = fmax(worst, fabs(xl[2 * q + 1] - (v0 + a * t + b * t * t / 2)));
    }
    CHECK(worst < 1e-12, "law vs closed form: %g", worst);
    const double late[1] = {H + 1.0};
    CHECK(tl_min_energy_law(2, 1, A, Bc, H, 1, x0, xf, 1, late, ul, xl, &linfo, lw) == TL_ERR_VALUE,
          "time past the horizon");
    free(lw);
}

/* A batch of references (the small systems: four samples a vector, the
 * rest one at a time) equals, bit for bit, the same samples one call each,
 * and a plain loop over the plan's K, Ad, Bd written here. */
static void test_references_batch(void)
{
    unsigned seed = 777u;
    const ptrdiff_t dims[][2] = {{1, 1}, {2, 1}, {3, 3}, {6, 2}, {5, 2}}, B = 11, T = 12;
    int same = 1;
    double worst = 0.0;
    for (size_t q = 0; q < sizeof dims / sizeof dims[0]; q++) {
        const ptrdiff_t n = dims[q][0], m = dims[q][1];
        double *Ad = xmalloc(sizeof(double) * n * n), *Bd = xmalloc(sizeof(double) * n * m);
        random_system(n, m, Ad, Bd, &seed);
        const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
        void *mem = xmalloc(tl_ref_plan_bytes(n, m, T, TL_REF_EXACT));
        void *work = xmalloc(ref_work_bytes(n, m, T));
        tl_ref_plan plan;
        CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &sys, 0, NULL, NULL, 0.5, T, work) ==
                  TL_OK, "batch plan (%td, %td)", n, m);
        const ptrdiff_t su = T * m, ss = (T + 1) * n;
        double *x0 = xmalloc(sizeof(double) * B * n), *xf = xmalloc(sizeof(double) * B * n);
        double *out[2][4];
        for (ptrdiff_t i = 0; i < B * n; i++)
            x0[i] = 4 * uniform(&seed), xf[i] = uniform(&seed);
        for (int r = 0; r < 2; r++) {
            out[r][0] = xmalloc(sizeof(double) * B * su);
            out[r][1] = xmalloc(sizeof(double) * B * ss);
            out[r][2] = xmalloc(sizeof(double) * B);
            out[r][3] = xmalloc(sizeof(double) * B);
        }
        CHECK(tl_ref_apply(&plan, B, x0, xf, out[0][0], out[0][1], out[0][2], out[0][3], work) ==
                  TL_OK, "batch apply");
        for (ptrdiff_t b = 0; b < B; b++)
            tl_ref_apply(&plan, 1, x0 + b * n, xf + b * n, out[1][0] + b * su, out[1][1] + b * ss,
                         out[1][2] + b, out[1][3] + b, work);
        same &= memcmp(out[0][0], out[1][0], sizeof(double) * B * su) == 0 &&
                memcmp(out[0][1], out[1][1], sizeof(double) * B * ss) == 0 &&
                memcmp(out[0][2], out[1][2], sizeof(double) * B) == 0 &&
                memcmp(out[0][3], out[1][3], sizeof(double) * B) == 0;
        for (ptrdiff_t b = 0; b < B; b++) { /* u = K (xf - Ad^T x0), rolled out */
            double d[6], x[6], xn[6], e = 0.0, scale = 1.0;
            for (ptrdiff_t i = 0; i < n; i++) {
                double acc = 0.0;
                for (ptrdiff_t j = 0; j < n; j++)
                    acc += plan.AdT[i * n + j] * x0[b * n + j];
                d[i] = xf[b * n + i] - acc;
                x[i] = x0[b * n + i];
            }
            double z[6];
            for (ptrdiff_t i = 0; i < n; i++) { /* R^T z = S d, forward substitution */
                double acc = 0.0;
                for (ptrdiff_t j = 0; j < n; j++)
                    acc += plan.S[i * n + j] * d[j];
                for (ptrdiff_t j = 0; j < i; j++)
                    acc -= plan.L[i * n + j] * z[j];
                z[i] = acc * plan.L[i * n + i]; /* L's diagonal holds 1 / R_kk */
            }
            for (ptrdiff_t k = 0; k < T; k++) {
                for (ptrdiff_t j = 0; j < m; j++) {
                    double uk = 0.0;
                    for (ptrdiff_t i = 0; i < n; i++)
                        uk += plan.K[(k * m + j) * n + i] * z[i];
                    e += uk * uk;
                    worst = fmax(worst, fabs(out[0][0][b * su + k * m + j] - uk) / (1 + fabs(uk)));
                }
                for (ptrdiff_t i = 0; i < n; i++) {
                    xn[i] = 0.0;
                    for (ptrdiff_t j = 0; j < n; j++)
                        xn[i] += Ad[i * n + j] * x[j];
                    for (ptrdiff_t j = 0; j < m; j++)
                        xn[i] += Bd[i * m + j] * out[0][0][b * su + k * m + j];
                }
                for (ptrdiff_t i = 0; i < n; i++) {
                    x[i] = xn[i];
                    scale = fmax(scale, fabs(x[i]));
                    worst = fmax(worst, fabs(out[0][1][b * ss + (k + 1) * n + i] - x[i]) / scale);
                }
            }
            worst = fmax(worst, fabs(out[0][3][b] - 0.5 * e) / (1 + e));
        }
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < 4; k++)
                free(out[r][k]);
        free(x0), free(xf), free(mem), free(work), free(Ad), free(Bd);
    }
    CHECK(same, "a batch of references is bit for bit the samples one at a time");
    CHECK(worst < 1e-13, "references vs a plain loop: %g", worst);
}

/* The plan memory and its scratch for steps they cannot address: both
 * queries say 0 (they used to overflow signed or wrap around), and the plan
 * is refused with TL_ERR_SHAPE before anything is written, whatever buffers
 * the caller passes. */
static void test_references_huge(void)
{
    const size_t max_doubles = SIZE_MAX / sizeof(double);
    /* n = m = 1, exact: AdT, drift, S, L and T controls; the last step count that fits */
    const ptrdiff_t last_ok = (ptrdiff_t)(max_doubles - 4);
    CHECK(tl_ref_plan_bytes(1, 1, last_ok, TL_REF_EXACT) == max_doubles * sizeof(double),
          "largest addressable plan");
    CHECK(tl_ref_plan_bytes(1, 1, last_ok + 1, TL_REF_EXACT) == 0, "plan one step too long");
    const size_t big = (size_t)1 << 40, per_step = 3 * 2 * sizeof(double);
    int grows = 1; /* each method keeps at least the T m n doubles of K */
    for (int method = 0; method < TL_REF_COUNT; method++)
        grows &= tl_ref_init_work_bytes(3, 2, (ptrdiff_t)big, (tl_ref_method)method) >
                     big * per_step &&
                 tl_ref_plan_bytes(3, 2, (ptrdiff_t)big, (tl_ref_method)method) > big * per_step;
    CHECK(grows, "2^40 steps do not wrap around");

    const double Ad[4] = {1, 0.5, 0, 1}, Bd[4] = {0.125, 0, 0.5, 1};
    const struct {
        ptrdiff_t n, m, steps;
    } cases[] = {{1, 1, ((ptrdiff_t)1 << 61) - 1}, {1, 1, PTRDIFF_MAX}, {2, 2, (ptrdiff_t)1 << 62},
                 {2, 1, (ptrdiff_t)1 << 61}, {1, 2, PTRDIFF_MAX / 2}, {2, 2, last_ok}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ptrdiff_t n = cases[i].n, m = cases[i].m, T = cases[i].steps;
        for (int method = 0; method < TL_REF_COUNT; method++)
            CHECK(tl_ref_init_work_bytes(n, m, T, (tl_ref_method)method) == 0,
                  "init work of n=%td m=%td steps=%td method %d", n, m, T, method);
        const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
        for (int method = 0; method < TL_REF_COUNT; method++) {
            CHECK(tl_ref_plan_bytes(n, m, T, (tl_ref_method)method) == 0,
                  "plan bytes of n=%td m=%td steps=%td method %d", n, m, T, method);
            tl_ref_plan plan;
            double mem[64], work[256];
            memset(&plan, 0xA5, sizeof plan);
            memset(mem, 0xA5, sizeof mem), memset(work, 0xA5, sizeof work);
            CHECK(tl_ref_plan_init(&plan, mem, (tl_ref_method)method, &sys, 0, Ad, Bd, 0.25, T,
                                   work) == TL_ERR_SHAPE,
                  "plan of n=%td m=%td steps=%td method %d accepted", n, m, T, method);
            CHECK(untouched(&plan, sizeof plan, 0xA5) && untouched(mem, sizeof mem, 0xA5) &&
                      untouched(work, sizeof work, 0xA5),
                  "refused plan of steps=%td method %d wrote", T, method);
        }
    }
}

/* More inputs than states (m > n): the scratch holds V_j = Ad^j Bd (n x m).
 * Scalar closed form: W = sum_j a^2j |b|^2, u_k = a^(T-1-k) b d / W, energy d^2 / W. */
static void test_references_wide_input(void)
{
    const double a = 0.8, Ad[1] = {a}, Bd[4] = {0.5, -1.0, 0.25, 2.0}, x0[1] = {3.0}, xf[1] = {-1.0};
    const ptrdiff_t n = 1, m = 4, T = 3;
    const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
    void *mem = xmalloc(tl_ref_plan_bytes(n, m, T, TL_REF_EXACT));
    void *work = xmalloc(tl_ref_init_work_bytes(n, m, T, TL_REF_EXACT));
    void *awork = xmalloc(tl_ref_apply_work_bytes(n, m));
    tl_ref_plan plan;
    CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &sys, 0, NULL, NULL, 1.0, T, work) == TL_OK,
          "m > n plan status");
    double u[12], S[4], err = NAN, energy = NAN;
    CHECK(tl_ref_apply(&plan, 1, x0, xf, u, S, &err, &energy, awork) == TL_OK, "m > n apply");
    double bb = 0.0, W = 0.0, worst = 0.0;
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
    CHECK(fabs(energy - d * d / W) < 1e-13 * (d * d / W), "m > n energy %.17g vs %.17g", energy,
          d * d / W);
    free(mem), free(work), free(awork);
}

/* exact on a chain of 8 integrators (x_i' = x_{i+1}, x_8' = u), whose C has
 * columns spanning dt^8 / 8! to dt: the rollout, done here, reaches xf to
 * 1e-10 of the state scale (the Cholesky factor of C C^T missed it by up to
 * 1e-3). Ad, Bd in closed form: Ad_ij = dt^(j-i) / (j-i)!, Bd_i = dt^(9-i) / (9-i)!. */
static void test_references_chain(void)
{
    enum { n = 8 };
    const double dts[3] = {0.25, 0.5, 1.0};
    const ptrdiff_t Ts[2] = {24, 60};
    double worst = 0.0;
    unsigned seed = 4242u;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++) {
            const double dt = dts[a];
            const ptrdiff_t T = Ts[b];
            double Ad[n * n] = {0}, Bd[n], fact = 1.0;
            for (int k = 0; k <= n; k++) {
                if (k > 0)
                    fact *= k;
                for (int i = 0; i + k < n; i++)
                    Ad[i * n + i + k] = pow(dt, k) / fact;
                if (k >= 1)
                    Bd[n - k] = pow(dt, k) / fact;
            }
            const tl_dynamics sys = tl_dynamics_linear(n, 1, Ad, Bd);
            void *mem = xmalloc(tl_ref_plan_bytes(n, 1, T, TL_REF_EXACT));
            void *work = xmalloc(ref_work_bytes(n, 1, T));
            tl_ref_plan plan;
            CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &sys, 0, NULL, NULL, dt, T, work) ==
                      TL_OK && plan.rank.rank == n,
                  "chain of 8 plan, dt %g T %td", dt, T);
            double x0[n], xf[n], u[60], S[61 * n], err, energy, x[n], xn[n], scale = 1.0;
            for (int i = 0; i < n; i++)
                x0[i] = uniform(&seed), xf[i] = uniform(&seed), x[i] = x0[i];
            CHECK(tl_ref_apply(&plan, 1, x0, xf, u, S, &err, &energy, work) == TL_OK, "apply");
            for (ptrdiff_t k = 0; k < T; k++) {
                for (int i = 0; i < n; i++) {
                    xn[i] = Bd[i] * u[k];
                    for (int j = 0; j < n; j++)
                        xn[i] += Ad[i * n + j] * x[j];
                }
                for (int i = 0; i < n; i++)
                    x[i] = xn[i], scale = fmax(scale, fabs(x[i]));
            }
            for (int i = 0; i < n; i++)
                worst = fmax(worst, fabs(x[i] - xf[i]) / scale);
            free(mem), free(work);
        }
    CHECK(worst < 1e-10, "chain of 8 reaches xf: %g of the state scale", worst);
}

/* Exact references of systems in every form -- per sample, time-varying,
 * with an offset: the plan of sample b is that of b's own dynamics, so its
 * controls, rolled out here with b's matrices at each step, reach xf, and
 * its states are that rollout. A sample outside the system's batch, and a
 * continuous model with a time-varying system, are refused. */
static void test_references_forms(void)
{
    static const int forms[] = {0, 21, 42, 63, 64 + 5, 64 + 10, 70};
    unsigned seed = 17u;
    const ptrdiff_t n = 3, m = 2, B = 3, T = 6;
    void *mem = xmalloc(tl_ref_plan_bytes(n, m, T, TL_REF_EXACT));
    void *work = xmalloc(ref_work_bytes(n, m, T));
    for (size_t fi = 0; fi < sizeof forms / sizeof forms[0]; fi++) {
        const form_desc d = nth_form(forms[fi]);
        formed_sys s;
        formed_init(&s, &d, n, m, B, T, &seed);
        double worst = 0.0;
        int ok = 1;
        for (ptrdiff_t b = 0; b < B; b++) {
            tl_ref_plan plan;
            const tl_status st =
                tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &s.dyn, s.dyn.batch ? b : 0, NULL,
                                 NULL, 1.0, T, work);
            double x0[3], xf[3], u[6 * 2], S[7 * 3], X[7 * 3], err, energy;
            for (ptrdiff_t i = 0; i < n; i++)
                x0[i] = uniform(&seed), xf[i] = uniform(&seed);
            if (st != TL_OK ||
                tl_ref_apply(&plan, 1, x0, xf, u, S, &err, &energy, work) != TL_OK) {
                ok = 0;
                continue;
            }
            plain_rollout_one(&s, s.dyn.batch ? b : 0, T, x0, u, X);
            for (ptrdiff_t i = 0; i < n; i++)
                worst = fmax(worst, fabs(X[T * n + i] - xf[i]));
            ok &= rel_err((T + 1) * n, S, X) < 1e-13 && fabs(err - 0.0) < 1e-12;
        }
        CHECK(ok && worst < 1e-12, "exact references of A %s, B %s, c %s reach xf: %g",
              form_name(d.form[0]), form_name(d.form[1]), form_name(d.form[2]), worst);
        if (s.dyn.batch > 0) {
            tl_ref_plan plan;
            CHECK(tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &s.dyn, B, NULL, NULL, 1.0, T,
                                   work) != TL_OK &&
                      tl_ref_plan_init(&plan, mem, TL_REF_EXACT, &s.dyn, -1, NULL, NULL, 1.0, T,
                                       work) != TL_OK,
                  "a sample outside the system's batch is refused");
        }
        if (s.dyn.steps > 0) {
            const double A[9] = {0, 1, 0, 0, 0, 1, 0, 0, 0}, Bc[6] = {0, 0, 0, 0, 1, 1};
            tl_ref_plan plan;
            CHECK(tl_ref_plan_init(&plan, mem, TL_REF_AVERAGE, &s.dyn, 0, A, Bc, 0.5, T, work) ==
                      TL_ERR_VALUE, "a time-varying system has no continuous model");
        }
        formed_free(&s);
    }
    free(mem), free(work);
}

/* The law of the scalar x' = a x + u at long horizons, stable and unstable,
 * against its closed form x(t) = (x0 sinh(a (H - t)) + xf sinh(a t)) / sinh(a H)
 * (the solution of x'' = a^2 x with x(0) = x0, x(H) = xf), written with
 * decaying exponentials only; u(t) = x' - a x. */
static void test_law_long_horizons(void)
{
    const struct {
        double a, H;
    } cases[] = {{-0.5, 200.0}, {-0.5, 1000.0}, {-2.0, 1000.0}, {0.5, 200.0}, {0.3, 1000.0}};
    const double x0[1] = {1.5}, xf[1] = {-0.75};
    double worst = 0.0;
    void *lw = xmalloc(tl_min_energy_law_work_bytes(1, 1));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const double a = cases[c].a, H = cases[c].H, k = fabs(a), A[1] = {a}, B[1] = {1.0};
        double times[7] = {0.0, 1.0, 0.3 * H, 0.5 * H, 0.7 * H, H - 1.0, H}, ul[7], xl[7];
        tl_law_info info;
        CHECK(tl_min_energy_law(1, 1, A, B, H, 1, x0, xf, 7, times, ul, xl, &info, lw) == TL_OK,
              "law a = %g, H = %g", a, H);
        CHECK(info.backward == (a > 0) && info.growth <= 1.0 + 1e-12,
              "direction of a = %g: backward %d growth %g", a, info.backward, info.growth);
        for (int q = 0; q < 7; q++) {
            const double t = times[q], s = H - t, den = -expm1(-2 * k * H);
            /* sinh(k s)/sinh(k H) = e^{-k t} (1 - e^{-2 k s}) / (1 - e^{-2 k H}) */
            const double w0 = exp(-k * t) * -expm1(-2 * k * s) / den;
            const double w1 = exp(-k * s) * -expm1(-2 * k * t) / den;
            const double dw0 = -k * exp(-k * t) * (1 + exp(-2 * k * s)) / den;
            const double dw1 = k * exp(-k * s) * (1 + exp(-2 * k * t)) / den;
            const double xt = x0[0] * w0 + xf[0] * w1, dx = x0[0] * dw0 + xf[0] * dw1;
            worst = fmax(worst, fabs(xl[q] - xt) / 1.5);
            worst = fmax(worst, fabs(ul[q] - (dx - a * xt)) / 1.5);
        }
    }
    CHECK(worst < 1e-12, "scalar law at long horizons vs closed form: %g", worst);
    /* a saddle, diag(1, -1), over H = 40: e^{At} grows by e^40 either way */
    const double As[4] = {1, 0, 0, -1}, Bs[2] = {1, 1}, xs0[2] = {1, 1}, xsf[2] = {0, 0};
    double tt[1] = {20.0}, us[1], xs[2];
    tl_law_info info;
    void *lw2 = xmalloc(tl_min_energy_law_work_bytes(2, 1));
    CHECK(tl_min_energy_law(2, 1, As, Bs, 40.0, 1, xs0, xsf, 1, tt, us, xs, &info, lw2) ==
                  TL_ERR_SINGULAR && info.growth > TL_LAW_GROWTH_LIMIT,
          "saddle over a long horizon refused (growth %g)", info.growth);
    free(lw), free(lw2);
}

static void test_final_state_error(void)
{
    /* double integrator from (1, 2) under u = 1: x_k = (1 + 2 k dt + (k dt)^2/2, 2 + k dt) */
    const double dt = 0.5, Ad[4] = {1, dt, 0, 1}, Bd[2] = {dt * dt / 2, dt};
    const tl_dynamics sys = tl_dynamics_linear(2, 1, Ad, Bd);
    const double x0[4] = {1, 2, 1, 2}, xf[4] = {0, 0, 1, 2}, u[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const int64_t lengths[2] = {4, 0};
    double err[2];
    void *work = xmalloc(tl_rollout_work_bytes(2, 1));
    CHECK(tl_final_state_error(&sys, TL_F64, 2, 4, lengths, u, x0, xf, err, work) == TL_OK,
          "status");
    const double t = 4 * dt, p = 1 + 2 * t + t * t / 2, v = 2 + t;
    CHECK(fabs(err[0] - sqrt(p * p + v * v)) < 1e-13 && err[1] == 0.0, "errors %g %g", err[0],
          err[1]);
    const int64_t bad[2] = {5, 0}, negative[2] = {4, -1};
    CHECK(tl_final_state_error(&sys, TL_F64, 2, 4, bad, u, x0, xf, err, work) == TL_ERR_VALUE,
          "length past the end");
    CHECK(tl_final_state_error(&sys, TL_F64, 2, 4, negative, u, x0, xf, err, work) ==
              TL_ERR_VALUE, "negative length");
    CHECK(tl_final_state_error(&sys, TL_DTYPE_COUNT, 2, 4, NULL, u, x0, xf, err, work) ==
              TL_ERR_VALUE, "bad dtype");
    CHECK(tl_final_state_error(&sys, TL_F64, 2, 4, NULL, u, x0, xf, err, NULL) == TL_ERR_NOMEM,
          "no work");
    float xf32[4] = {0, 0, 1, 2}, x032[4] = {1, 2, 1, 2}, u32[8] = {1, 1, 1, 1, 1, 1, 1, 1}, e32[2];
    CHECK(tl_final_state_error(&sys, TL_F32, 2, 4, NULL, u32, x032, xf32, e32, work) == TL_OK &&
              fabsf(e32[0] - (float)sqrt(p * p + v * v)) < 1e-5f, "float32");
    free(work);
}

/* tl_all_finite against a plain isfinite loop: every length up to 70 (the
 * vector, block and tail paths) with one bad value at every position. */
static void test_all_finite(void)
{
    double d[4200];
    float f[4200];
    for (int i = 0; i < 4200; i++)
        d[i] = (i % 7) - 3.5, f[i] = (float)((i % 5) - 2);
    int ok = 1;
    const double bad[3] = {NAN, INFINITY, -INFINITY};
    for (int len = 0; len <= 70; len++) {
        ok &= tl_all_finite_f64(d, len) == 1 && tl_all_finite_f32(f, len) == 1;
        for (int pos = 0; pos < len; pos++)
            for (int b = 0; b < 3; b++) {
                const double keep = d[pos];
                const float keepf = f[pos];
                d[pos] = bad[b], f[pos] = (float)bad[b];
                ok &= tl_all_finite_f64(d, len) == 0 && tl_all_finite_f32(f, len) == 0;
                d[pos] = keep, f[pos] = keepf;
            }
    }
    /* past one 4096-element block, and the largest finite values */
    d[4199] = NAN, f[4100] = INFINITY;
    ok &= !tl_all_finite_f64(d, 4200) && tl_all_finite_f64(d, 4199) && !tl_all_finite_f32(f, 4200);
    d[0] = DBL_MAX, d[1] = -DBL_MAX, f[0] = FLT_MAX;
    ok &= tl_all_finite_f64(d, 2) && tl_all_finite_f32(f, 1);
    CHECK(ok, "tl_all_finite agrees with isfinite");
}

/* Is element i of rollout-loss input a (0 u, 1 x0, 2 ru, 3 rs, 4 tg) read by
 * a call of all three terms with the default terminal target (tg unused)
 * when it is `with_tg`, and without include_initial? The rule written out:
 * controls before each sequence's end, x0 of a sequence with a valid step,
 * ref_controls at valid steps, ref_states at the states scored (1 .. L_b). */
static int rollout_reads(int a, ptrdiff_t i, const int64_t *lengths, ptrdiff_t T, ptrdiff_t n,
                         int with_tg) /* m = 1 */
{
    const ptrdiff_t row = a == 0 || a == 2 ? T : a == 3 ? (T + 1) * n : n;
    const ptrdiff_t b = i / row, k = a == 3 ? (i % row) / n : i % row;
    const ptrdiff_t L = lengths != NULL ? (ptrdiff_t)lengths[b] : T;
    switch (a) {
    case 0:
    case 2:
        return k < L;
    case 1:
        return L > 0;
    case 3:
        return k >= 1 && k <= L;
    default:
        return with_tg && L > 0;
    }
}

/* check_finite: TL_ERR_NONFINITE for an inf/NaN in an element a loss reads,
 * with tl_loss_bad_inputs naming the input; an element it does not read
 * (padding, an unscored state 0) changes neither the status nor a bit of the
 * result; nonfinite for an overflowing result; and the zero gradient of
 * padding when Ad itself holds NaN. Both kernels. */
static void test_loss_finite_checks(void)
{
    unsigned seed = 4242u;
    const ptrdiff_t n = 2, m = 1, B = 9, T = 5; /* 9: a full tile and a partial one */
    double Ad[4], Bd[2];
    random_system(n, m, Ad, Bd, &seed);
    const tl_dynamics sys = tl_dynamics_linear(n, m, Ad, Bd);
    double u[9 * 5], ru[9 * 5], x0[9 * 2], rs[9 * 6 * 2], tg[9 * 2], gu[9 * 5], gx[9 * 2];
    double gu0[9 * 5], gx0[9 * 2];
    double *arrays[5] = {u, x0, ru, rs, tg};
    const unsigned bits[5] = {TL_IN_CONTROLS, TL_IN_X0, TL_IN_REF_CONTROLS, TL_IN_REF_STATES,
                              TL_IN_TARGET};
    const ptrdiff_t sizes[5] = {B * T * m, B * n, B * T * m, B * (T + 1) * n, B * n};
    for (int a = 0; a < 5; a++)
        for (ptrdiff_t i = 0; i < sizes[a]; i++)
            arrays[a][i] = uniform(&seed);
    const int64_t lengths[9] = {5, 2, 0, 4, 5, 1, 3, 5, 2};
    tl_loss_spec spec0 = basic_spec(B, T, TL_TERM_CONTROL | TL_TERM_TRAJECTORY | TL_TERM_TERMINAL);
    void *work = xmalloc(tl_loss_work_bytes(&sys, 0, &spec0));
    tl_loss_value v, v0;
    for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++) {
        int ok = 1, reads_seen = 0, skips_seen = 0;
        for (int with_lengths = 0; with_lengths < 2; with_lengths++) {
            for (int with_tg = 0; with_tg < 2; with_tg++) {
                tl_loss_spec spec = spec0;
                spec.sel.lengths = with_lengths ? lengths : NULL;
                spec.check_finite = 1, spec.kernel = (tl_kernel)kernel;
                const tl_loss_io io = {TL_F64, u, x0, ru, rs, with_tg ? tg : NULL, gu, gx};
                tl_loss_io io0 = io;
                io0.grad_controls = gu0, io0.grad_x0 = gx0;
                ok &= tl_rollout_loss(&sys, &spec, &io0, &v0, work) == TL_OK && !v0.nonfinite;
                ok &= tl_loss_bad_inputs(&sys, 0, &spec, &io) == 0;
                /* every element of every array, NaN or inf, with and without the check */
                for (int a = 0; a < 5; a++) {
                    for (ptrdiff_t i = 0; i < sizes[a]; i++) {
                        const double keep = arrays[a][i];
                        const int read = rollout_reads(a, i, spec.sel.lengths, T, n, with_tg);
                        reads_seen += read;
                        skips_seen += !read;
                        arrays[a][i] = i % 2 ? INFINITY : NAN;
                        spec.check_finite = 1;
                        const tl_status st = tl_rollout_loss(&sys, &spec, &io, &v, work);
                        const unsigned bad = tl_loss_bad_inputs(&sys, 0, &spec, &io);
                        if (read) {
                            ok &= st == TL_ERR_NONFINITE && bad == bits[a];
                            spec.check_finite = 0;
                            ok &= tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_OK &&
                                  !isfinite(v.total) && v.nonfinite;
                        } else {
                            ok &= st == TL_OK && bad == 0 &&
                                  memcmp(&v.total, &v0.total, sizeof v.total) == 0 &&
                                  memcmp(gu, gu0, sizeof gu) == 0 &&
                                  memcmp(gx, gx0, sizeof gx) == 0;
                        }
                        arrays[a][i] = keep;
                    }
                }
            }
        }
        CHECK(ok && reads_seen > 0 && skips_seen > 0,
              "kernel %d: check_finite finds inf/NaN in every element read, and only there "
              "(%d read, %d not)", kernel, reads_seen, skips_seen);
    }

    /* the control loss: a NaN in its last row, and a float64 value past DBL_MAX */
    tl_loss_spec cs = basic_spec(B, T, TL_TERM_CONTROL);
    cs.check_finite = 1;
    void *cw = xmalloc(tl_loss_work_bytes(NULL, m, &cs));
    const tl_loss_io cio = {TL_F64, u, NULL, ru, NULL, NULL, gu, NULL};
    u[B * T - 1] = NAN;
    int ok = tl_control_loss(&cs, m, &cio, &v, cw) == TL_ERR_NONFINITE;
    u[B * T - 1] = 1e200, ru[B * T - 1] = -1e200;
    ok &= tl_control_loss(&cs, m, &cio, &v, cw) == TL_OK && v.nonfinite && isinf(v.total);
    u[B * T - 1] = 0.5, ru[B * T - 1] = 0.25;
    ok &= tl_control_loss(&cs, m, &cio, &v, cw) == TL_OK && !v.nonfinite;
    /* float32: a gradient past FLT_MAX from a finite value */
    float uf[9 * 5], rf[9 * 5], gf[9 * 5];
    for (int i = 0; i < B * T; i++)
        uf[i] = 0.0f, rf[i] = 0.0f;
    uf[0] = 3e38f, rf[0] = -3e38f;
    cs.sel.batch = 1, cs.sel.steps = 1;
    const tl_loss_io fio = {TL_F32, uf, NULL, rf, NULL, NULL, gf, NULL};
    ok &= tl_control_loss(&cs, m, &fio, &v, cw) == TL_OK && v.nonfinite && isfinite(v.total) &&
          isinf(gf[0]);
    CHECK(ok, "control loss: TL_ERR_NONFINITE for NaN input, nonfinite for overflow");

    /* the control loss with lengths reads the valid steps only: NaN past a
     * length is TL_OK with the same bits, NaN before it TL_ERR_NONFINITE */
    cs.sel.batch = B, cs.sel.steps = T, cs.sel.lengths = lengths;
    for (int i = 0; i < B * T; i++)
        u[i] = uniform(&seed), ru[i] = uniform(&seed);
    tl_loss_io cio0 = cio;
    cio0.grad_controls = gu0;
    ok = tl_control_loss(&cs, m, &cio0, &v0, cw) == TL_OK;
    for (int q = 0; q < 2; q++) {
        double *arr = q == 0 ? u : ru;
        for (ptrdiff_t b = 0; b < B; b++)
            for (ptrdiff_t t = 0; t < T; t++) {
                const double keep = arr[b * T + t];
                arr[b * T + t] = NAN;
                const tl_status st = tl_control_loss(&cs, m, &cio, &v, cw);
                const unsigned bad = tl_loss_bad_inputs(NULL, m, &cs, &cio);
                if (t < lengths[b])
                    ok &= st == TL_ERR_NONFINITE &&
                          bad == (q == 0 ? TL_IN_CONTROLS : TL_IN_REF_CONTROLS);
                else
                    ok &= st == TL_OK && bad == 0 && memcmp(&v.total, &v0.total, 8) == 0 &&
                          memcmp(gu, gu0, sizeof gu) == 0;
                arr[b * T + t] = keep;
            }
    }
    CHECK(ok, "control loss: check_finite reads the valid steps only");
    free(cw);

    /* NaN in Ad: every gradient after a sequence's last valid step is still
     * exactly zero, in both kernels */
    Ad[1] = NAN;
    for (int kernel = 0; kernel < TL_KERNEL_COUNT; kernel++) {
        tl_loss_spec spec = basic_spec(B, T, TL_TERM_CONTROL | TL_TERM_TRAJECTORY);
        spec.sel.lengths = lengths, spec.kernel = (tl_kernel)kernel;
        const tl_loss_io io = {TL_F64, u, x0, ru, rs, NULL, gu, gx};
        ok = tl_rollout_loss(&sys, &spec, &io, &v, work) == TL_OK;
        for (ptrdiff_t b = 0; b < B; b++) {
            for (ptrdiff_t t = lengths[b]; t < T; t++)
                ok &= gu[b * T + t] == 0.0;
            if (lengths[b] == 0)
                ok &= gx[b * n] == 0.0 && gx[b * n + 1] == 0.0;
        }
        CHECK(ok, "kernel %d: with NaN in Ad, padding still gets exactly zero gradient", kernel);
    }
    free(work);
}

/* Every chunk is computed exactly once, by a worker numbered below
 * min(workers, count) (at least 1), whatever the count and the workers
 * asked for. */
typedef struct {
    int *hits, bad_worker, workers;
} ranges_seen;

static void record_range(void *ctx, ptrdiff_t begin, ptrdiff_t end, int worker)
{
    ranges_seen *seen = (ranges_seen *)ctx;
    for (ptrdiff_t i = begin; i < end; i++)
        seen->hits[i]++;
    if (worker < 0 || worker >= seen->workers || begin > end)
        seen->bad_worker = 1;
}

/* One call of tl_parallel_ranges, checked; 1 if every chunk was computed
 * exactly once by a worker numbered below min(workers, count). */
static int ranges_once(tl_pool *pool, int workers, ptrdiff_t count)
{
    const int bound = workers < 1 ? 1 : count < workers ? (count < 1 ? 1 : (int)count) : workers;
    ranges_seen seen = {xmalloc(sizeof(int) * (size_t)(count + 1)), 0, bound};
    memset(seen.hits, 0, sizeof(int) * (size_t)(count + 1));
    tl_parallel_ranges(pool, workers, count, record_range, &seen);
    int ok = !seen.bad_worker;
    for (ptrdiff_t i = 0; i < count; i++)
        ok &= seen.hits[i] == 1;
    free(seen.hits);
    return ok;
}

/* Worker 0 holds its first range until another worker has run one (or 5 s
 * passed): a call with two workers really runs on two threads. */
typedef struct {
    pthread_mutex_t lock;
    int others;
} meeting;

static int others_seen(meeting *m)
{
    pthread_mutex_lock(&m->lock);
    const int others = m->others;
    pthread_mutex_unlock(&m->lock);
    return others;
}

static void meet_range(void *ctx, ptrdiff_t begin, ptrdiff_t end, int worker)
{
    meeting *m = (meeting *)ctx;
    (void)end;
    if (worker != 0) {
        pthread_mutex_lock(&m->lock);
        m->others++;
        pthread_mutex_unlock(&m->lock);
        return;
    }
    const struct timespec pause = {0, 100000}; /* 0.1 ms */
    for (int i = 0; begin == 0 && i < 50000 && others_seen(m) == 0; i++)
        nanosleep(&pause, NULL);
}

static int runs_on_two_threads(tl_pool *pool)
{
    meeting m;
    pthread_mutex_init(&m.lock, NULL);
    m.others = 0;
    tl_parallel_ranges(pool, 2, 64, meet_range, &m);
    pthread_mutex_destroy(&m.lock);
    return m.others > 0;
}

typedef struct {
    tl_pool *pool;
    int seed, ok;
} pool_user;

/* Many calls on one pool, some after a pause long enough for its threads
 * to fall asleep, with the worker count changing between calls. */
static void *use_pool(void *arg)
{
    pool_user *u = (pool_user *)arg;
    const struct timespec pause = {0, 2000000}; /* 2 ms */
    for (int call = 0; call < 300; call++) {
        if (call % 50 == 7)
            nanosleep(&pause, NULL);
        const int threads = 1 + (call + u->seed) % 4;
        u->ok &= ranges_once(u->pool, threads, 8 + (call * 37 + u->seed) % 200);
    }
    return NULL;
}

static void test_parallel_ranges(void)
{
    const ptrdiff_t counts[] = {0, 1, 2, 7, 8, 9, 64, 1001};
    tl_pool *pool = xmalloc(tl_pool_bytes());
    CHECK(tl_pool_init(pool) == TL_OK && tl_pool_init(NULL) == TL_ERR_VALUE, "pool init");
    int ok = 1;
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++)
        for (int workers = -1; workers <= 5; workers++)
            ok &= ranges_once(NULL, workers, counts[k]) && ranges_once(pool, workers, counts[k]);
    CHECK(ok, "parallel ranges: each chunk exactly once, by a worker below min(workers, count)");
    CHECK(runs_on_two_threads(NULL) && runs_on_two_threads(pool),
          "parallel ranges: two workers run on two threads, with and without a pool");

    /* two threads share the pool: one call at a time uses it, the other
     * starts threads of its own; every call still covers its chunks once */
    pool_user users[2] = {{pool, 0, 1}, {pool, 1, 1}};
    pthread_t other;
    const int started = pthread_create(&other, NULL, use_pool, &users[1]) == 0;
    use_pool(&users[0]);
    if (started)
        pthread_join(other, NULL);
    CHECK(started && users[0].ok && users[1].ok,
          "parallel ranges: a pool shared by two calling threads, asleep and awake");
    tl_pool_stop(pool);
    CHECK(tl_pool_init(pool) == TL_OK && ranges_once(pool, 3, 100),
          "a stopped pool re-initialised");
    tl_pool_stop(pool);
    free(pool);
    tl_pool_stop(NULL);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* failures show even if a later test crashes */
    test_references_batch();
    test_status_messages();
    test_expm_closed_forms();
    test_expm_errors();
    test_expm_badly_scaled();
    test_expm_structure();
    test_expm_cancel();
    test_discretize_exact();
    test_discretize();
    test_rollout();
    test_rollout_errors();
    test_control_only_ignores_system();
    test_time_weights();
    test_time_weights_huge();
    test_losses();
    test_parallel_ranges();
    test_loss_threads();
    test_dynamics_check();
    test_rollout_forms();
    test_loss_forms();
    test_loss_forms_fd();
    test_loss_kernels();
    test_loss_optional_outputs();
    test_all_finite();
    test_loss_finite_checks();
    test_references();
    test_references_huge();
    test_references_wide_input();
    test_references_chain();
    test_references_forms();
    test_law_long_horizons();
    test_final_state_error();
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed == 0 ? 0 : 1;
}
