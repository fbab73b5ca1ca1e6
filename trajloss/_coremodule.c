/*
 * _coremodule.c -- trajloss._core, the only C file that knows Python.
 *
 * Every entry point follows the same path: parse -> validate and convert the
 * arguments (naming the argument in every error) -> allocate the outputs and
 * the scratch space while holding the GIL -> release the GIL around the C
 * core -> map its status code to an exception. There is no maths here.
 *
 * Dtype policy for trajectory arrays (x0, controls, states, gradients):
 *   - ndarrays and other array-likes must be float32 or float64, and all of
 *     them in one call must share that dtype (TypeError names the odd one);
 *   - plain Python lists, tuples and numbers are "weak": they may hold ints
 *     and adopt the call's dtype (float64 when nothing else decides);
 *   - arrays are copied only when they are not already C-contiguous, aligned
 *     and of the right dtype.
 * System matrices (A, B, Ad, Bd) accept any real numeric array-like and are
 * stored as float64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#define NPY_TARGET_VERSION NPY_1_25_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <string.h>

#include "trajloss.h"

#ifndef TL_LAPACK_PROVIDER
#define TL_LAPACK_PROVIDER "unknown"
#endif

static PyObject *LinAlgError; /* numpy.linalg.LinAlgError, set once at import */

/* ---- errors ----------------------------------------------------------- */

/* Raise the exception that matches a core status, with `context` in front. */
static void set_status_error(tl_status status, const char *context)
{
    PyObject *type;
    switch (status) {
    case TL_ERR_SHAPE:
    case TL_ERR_VALUE:
        type = PyExc_ValueError;
        break;
    case TL_ERR_SINGULAR:
        type = LinAlgError;
        break;
    case TL_ERR_NOMEM:
        type = PyExc_MemoryError;
        break;
    default:
        type = PyExc_RuntimeError;
        break;
    }
    PyErr_Format(type, "%s: %s", context, tl_status_message(status));
}

/* "(4, 16, 2)" or "(3,)" into buf. */
static const char *shape_str(int ndim, const npy_intp *dims, char *buf, size_t size)
{
    size_t used = (size_t)PyOS_snprintf(buf, size, "(");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)PyOS_snprintf(buf + used, size - used, i ? ", %" NPY_INTP_FMT : "%" NPY_INTP_FMT,
                                      dims[i]);
    if (used < size)
        PyOS_snprintf(buf + used, size - used, ndim == 1 ? ",)" : ")");
    return buf;
}

#define SHAPE_BUF 96
#define ARRAY_SHAPE(arr, buf) shape_str(PyArray_NDIM(arr), PyArray_DIMS(arr), buf, sizeof buf)

/* Prefix the pending exception's message with the argument name (same type). */
static void reraise_with_name(const char *name, const char *what)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    if (text == NULL) {
        PyErr_Clear();
        PyErr_Format(type ? type : PyExc_TypeError, "%s: %s", name, what);
    } else {
        PyErr_Format(type ? type : PyExc_TypeError, "%s: %s (%U)", name, what, text);
        Py_DECREF(text);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* ---- trajectory arrays: float32/float64, one dtype per call ----------- */

typedef struct {
    const char *name;
    PyObject *obj;       /* borrowed: what the caller passed */
    PyArrayObject *arr;  /* owned: after conversion, C-contiguous, call dtype */
    int weak;            /* a Python list/tuple/number: adopts the call dtype */
} float_arg;

static int is_weak(PyObject *obj)
{
    return PyList_Check(obj) || PyTuple_Check(obj) || PyFloat_Check(obj) ||
           (PyLong_Check(obj) && !PyBool_Check(obj));
}

static void release_float_args(float_arg *args, int count)
{
    for (int i = 0; i < count; i++)
        Py_CLEAR(args[i].arr);
}

/*
 * Convert every args[i].obj into args[i].arr: decide the call's dtype
 * (*typenum), check each argument's kind, and make each array C-contiguous
 * and aligned in that dtype. On failure an exception is set, the arrays
 * converted so far are released, and -1 is returned.
 */
static int convert_float_args(float_arg *args, int count, int *typenum)
{
    int first_strong = -1;
    for (int i = 0; i < count; i++) {
        args[i].weak = is_weak(args[i].obj);
        args[i].arr = (PyArrayObject *)PyArray_FromAny(args[i].obj, NULL, 0, 0, 0, NULL);
        if (args[i].arr == NULL) {
            reraise_with_name(args[i].name, "cannot be converted to an array");
            goto fail;
        }
        int type = PyArray_TYPE(args[i].arr);
        int ok = args[i].weak ? (PyTypeNum_ISINTEGER(type) || type == NPY_FLOAT ||
                                 type == NPY_DOUBLE)
                              : (type == NPY_FLOAT || type == NPY_DOUBLE);
        if (!ok) {
            PyErr_Format(PyExc_TypeError,
                         "%s must be a float32 or float64 array, got dtype %S",
                         args[i].name, (PyObject *)PyArray_DESCR(args[i].arr));
            goto fail;
        }
        if (args[i].weak)
            continue;
        if (first_strong < 0) {
            first_strong = i;
        } else if (type != PyArray_TYPE(args[first_strong].arr)) {
            PyErr_Format(PyExc_TypeError,
                         "%s has dtype %S but %s has dtype %S; all arrays of one call "
                         "must share one dtype (float32 or float64)",
                         args[i].name, (PyObject *)PyArray_DESCR(args[i].arr),
                         args[first_strong].name,
                         (PyObject *)PyArray_DESCR(args[first_strong].arr));
            goto fail;
        }
    }
    *typenum = first_strong < 0 ? NPY_DOUBLE : PyArray_TYPE(args[first_strong].arr);
    for (int i = 0; i < count; i++) {
        int flags = NPY_ARRAY_CARRAY_RO | (args[i].weak ? NPY_ARRAY_FORCECAST : 0);
        PyArrayObject *c = (PyArrayObject *)PyArray_FromAny(
            (PyObject *)args[i].arr, PyArray_DescrFromType(*typenum), 0, 0, flags, NULL);
        if (c == NULL)
            goto fail;
        Py_SETREF(args[i].arr, c);
    }
    return 0;
fail:
    release_float_args(args, count);
    return -1;
}

/* -1 with ValueError if a converted (contiguous) array holds NaN or inf. */
static int check_all_finite(const float_arg *arg)
{
    const npy_intp size = PyArray_SIZE(arg->arr);
    int finite = 1;
    if (PyArray_TYPE(arg->arr) == NPY_DOUBLE) {
        const double *p = (const double *)PyArray_DATA(arg->arr);
        for (npy_intp i = 0; i < size && finite; i++)
            finite = isfinite(p[i]);
    } else {
        const float *p = (const float *)PyArray_DATA(arg->arr);
        for (npy_intp i = 0; i < size && finite; i++)
            finite = isfinite(p[i]);
    }
    if (finite)
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s contains NaN or inf; pass check_finite=False to let them propagate",
                 arg->name);
    return -1;
}

/* ---- system matrices: any real numbers, stored as float64 -------------- */

/* A fresh float64 C-contiguous 2-D copy of obj, or NULL with an exception. */
static PyArrayObject *matrix_arg(PyObject *obj, const char *name)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (arr == NULL) {
        reraise_with_name(name, "cannot be converted to an array");
        return NULL;
    }
    int type = PyArray_TYPE(arr);
    if (!(PyTypeNum_ISINTEGER(type) || PyTypeNum_ISFLOAT(type))) {
        PyErr_Format(PyExc_TypeError, "%s must hold real numbers, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    if (PyArray_NDIM(arr) != 2) {
        char s[SHAPE_BUF];
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D matrix, got shape %s", name,
                     ARRAY_SHAPE(arr, s));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *c = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(NPY_DOUBLE), 2, 2,
        NPY_ARRAY_CARRAY | NPY_ARRAY_ENSURECOPY | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(arr);
    if (c == NULL)
        return NULL;
    const double *p = (const double *)PyArray_DATA(c);
    for (npy_intp i = 0; i < PyArray_SIZE(c); i++) {
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", name);
            Py_DECREF(c);
            return NULL;
        }
    }
    return c;
}

/*
 * Validate a (square, input) pair of system matrices named sq_name and
 * in_name: square is n x n, input is n x m, 1 <= n, m <= TL_MAX_DIM.
 * On success *sq and *in are new float64 copies.
 */
static int system_pair(PyObject *sq_obj, PyObject *in_obj, const char *sq_name,
                       const char *in_name, PyArrayObject **sq, PyArrayObject **in)
{
    char s[SHAPE_BUF];
    *sq = matrix_arg(sq_obj, sq_name);
    *in = *sq ? matrix_arg(in_obj, in_name) : NULL;
    if (*in == NULL)
        goto fail;
    npy_intp n = PyArray_DIM(*sq, 0), m = PyArray_DIM(*in, 1);
    if (n < 1 || n > TL_MAX_DIM || PyArray_DIM(*sq, 1) != n) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a square (n, n) matrix with 1 <= n <= %d, got shape %s",
                     sq_name, TL_MAX_DIM, ARRAY_SHAPE(*sq, s));
        goto fail;
    }
    if (PyArray_DIM(*in, 0) != n || m < 1 || m > TL_MAX_DIM) {
        PyErr_Format(PyExc_ValueError,
                     "%s must have shape (n, m) = (%" NPY_INTP_FMT ", m) with 1 <= m <= %d "
                     "to match %s, got shape %s",
                     in_name, n, TL_MAX_DIM, sq_name, ARRAY_SHAPE(*in, s));
        goto fail;
    }
    return 0;
fail:
    Py_CLEAR(*sq);
    Py_CLEAR(*in);
    return -1;
}

/* ---- trajectory shapes ------------------------------------------------ */

typedef struct {
    int batched;      /* x0 was (B, n) and controls (B, T, m) */
    npy_intp batch;   /* B (1 when unbatched) */
    npy_intp steps;   /* T */
} traj_shape;

/* x0 (B, n) or (n,); controls (B, T, m) or (T, m); both batched or neither. */
static int check_traj_shape(PyArrayObject *x0, PyArrayObject *u, npy_intp n, npy_intp m,
                            traj_shape *out)
{
    char s1[SHAPE_BUF], s2[SHAPE_BUF];
    int xd = PyArray_NDIM(x0), ud = PyArray_NDIM(u);
    if ((xd != 1 && xd != 2) || PyArray_DIM(x0, xd - 1) != n) {
        PyErr_Format(PyExc_ValueError,
                     "x0 must have shape (B, n) or (n,) with n = %" NPY_INTP_FMT ", got shape %s",
                     n, ARRAY_SHAPE(x0, s1));
        return -1;
    }
    out->batched = xd == 2;
    if (ud != xd + 1 || PyArray_DIM(u, ud - 1) != m) {
        PyErr_Format(PyExc_ValueError,
                     "controls must have shape %s with m = %" NPY_INTP_FMT
                     " to match x0 of shape %s, got shape %s",
                     out->batched ? "(B, T, m)" : "(T, m)", m, ARRAY_SHAPE(x0, s1),
                     ARRAY_SHAPE(u, s2));
        return -1;
    }
    out->batch = out->batched ? PyArray_DIM(x0, 0) : 1;
    if (out->batched && PyArray_DIM(u, 0) != out->batch) {
        PyErr_Format(PyExc_ValueError,
                     "controls has batch size %" NPY_INTP_FMT " but x0 has batch size %" NPY_INTP_FMT,
                     PyArray_DIM(u, 0), out->batch);
        return -1;
    }
    out->steps = PyArray_DIM(u, ud - 2);
    return 0;
}

/* A new uninitialised array of the trajectory layout: batch dim only if batched. */
static PyArrayObject *new_traj_array(const traj_shape *sh, npy_intp rows, npy_intp cols,
                                     int typenum, int with_rows)
{
    npy_intp dims[3];
    int nd = 0;
    if (sh->batched)
        dims[nd++] = sh->batch;
    if (with_rows)
        dims[nd++] = rows;
    dims[nd++] = cols;
    return (PyArrayObject *)PyArray_EMPTY(nd, dims, typenum, 0);
}

/* ---- _core.expm -------------------------------------------------------- */

static PyObject *core_expm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *A_obj;
    if (!PyArg_ParseTuple(args, "O:expm", &A_obj))
        return NULL;
    PyArrayObject *A = matrix_arg(A_obj, "A"), *E = NULL;
    void *work = NULL;
    if (A == NULL)
        return NULL;
    npy_intp n = PyArray_DIM(A, 0);
    if (n < 1 || n > 2 * TL_MAX_DIM || PyArray_DIM(A, 1) != n) {
        char s[SHAPE_BUF];
        PyErr_Format(PyExc_ValueError, "A must be a square (n, n) matrix with n >= 1, got shape %s",
                     ARRAY_SHAPE(A, s));
        goto fail;
    }
    E = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(A), NPY_DOUBLE, 0);
    work = PyMem_RawMalloc(tl_expm_work_bytes(n));
    if (E == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    tl_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tl_expm(n, (const double *)PyArray_DATA(A), (double *)PyArray_DATA(E), work);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "expm");
        goto fail;
    }
    PyMem_RawFree(work);
    Py_DECREF(A);
    return (PyObject *)E;
fail:
    PyMem_RawFree(work);
    Py_XDECREF(A);
    Py_XDECREF(E);
    return NULL;
}

/* ---- _core.discretize ------------------------------------------------- */

static const char *const DISC_METHODS[TL_DISC_COUNT] = {"zoh", "euler", "rk4"};

static PyObject *core_discretize(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"A", "B", "dt", "method", NULL};
    PyObject *A_obj, *B_obj, *dt_obj;
    const char *method_name = "zoh";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|s:discretize", kwlist, &A_obj, &B_obj,
                                     &dt_obj, &method_name))
        return NULL;

    int method = -1;
    for (int i = 0; i < TL_DISC_COUNT; i++)
        if (strcmp(method_name, DISC_METHODS[i]) == 0)
            method = i;
    if (method < 0) {
        PyErr_Format(PyExc_ValueError,
                     "method must be one of 'zoh', 'euler', 'rk4', got '%s'", method_name);
        return NULL;
    }
    if (!PyNumber_Check(dt_obj) || PyBool_Check(dt_obj) || PyComplex_Check(dt_obj)) {
        PyErr_Format(PyExc_TypeError, "dt must be a real number, got %R", dt_obj);
        return NULL;
    }
    double dt = PyFloat_AsDouble(dt_obj);
    if (dt == -1.0 && PyErr_Occurred())
        return NULL;
    if (!isfinite(dt) || dt <= 0.0) {
        PyErr_Format(PyExc_ValueError, "dt must be a finite number > 0, got %R", dt_obj);
        return NULL;
    }

    PyArrayObject *A, *B, *Ad = NULL, *Bd = NULL;
    void *work = NULL;
    if (system_pair(A_obj, B_obj, "A", "B", &A, &B) < 0)
        return NULL;
    npy_intp n = PyArray_DIM(A, 0), m = PyArray_DIM(B, 1);
    Ad = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(A), NPY_DOUBLE, 0);
    Bd = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(B), NPY_DOUBLE, 0);
    work = PyMem_RawMalloc(tl_discretize_work_bytes(n, m));
    if (Ad == NULL || Bd == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    tl_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tl_discretize((tl_disc_method)method, n, m, (const double *)PyArray_DATA(A),
                           (const double *)PyArray_DATA(B), dt, (double *)PyArray_DATA(Ad),
                           (double *)PyArray_DATA(Bd), work);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "discretize");
        goto fail;
    }
    PyMem_RawFree(work);
    Py_DECREF(A);
    Py_DECREF(B);
    return Py_BuildValue("(NN)", Ad, Bd);
fail:
    PyMem_RawFree(work);
    Py_XDECREF(A);
    Py_XDECREF(B);
    Py_XDECREF(Ad);
    Py_XDECREF(Bd);
    return NULL;
}

/* ---- _core.check_system ----------------------------------------------- */

static PyObject *core_check_system(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *sq_obj, *in_obj;
    const char *sq_name = "Ad", *in_name = "Bd";
    PyArrayObject *sq, *in;
    if (!PyArg_ParseTuple(args, "OO|ss:check_system", &sq_obj, &in_obj, &sq_name, &in_name))
        return NULL;
    if (system_pair(sq_obj, in_obj, sq_name, in_name, &sq, &in) < 0)
        return NULL;
    return Py_BuildValue("(NN)", sq, in);
}

/* ---- _core.rollout / _core.rollout_vjp -------------------------------- */

/* Borrow a tl_system view of validated (Ad, Bd); returns -1 with an exception. */
static int system_view(PyObject *Ad_obj, PyObject *Bd_obj, PyArrayObject **Ad,
                       PyArrayObject **Bd, tl_system *sys)
{
    if (system_pair(Ad_obj, Bd_obj, "Ad", "Bd", Ad, Bd) < 0)
        return -1;
    sys->n = PyArray_DIM(*Ad, 0);
    sys->m = PyArray_DIM(*Bd, 1);
    sys->Ad = (const double *)PyArray_DATA(*Ad);
    sys->Bd = (const double *)PyArray_DATA(*Bd);
    return 0;
}

static PyObject *core_rollout(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"Ad", "Bd", "x0", "controls", "check_finite", NULL};
    PyObject *Ad_obj, *Bd_obj;
    float_arg fa[2] = {{"x0", NULL, NULL, 0}, {"controls", NULL, NULL, 0}};
    int check_finite = 1, typenum;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|p:rollout", kwlist, &Ad_obj, &Bd_obj,
                                     &fa[0].obj, &fa[1].obj, &check_finite))
        return NULL;

    PyArrayObject *Ad = NULL, *Bd = NULL, *states = NULL;
    void *work = NULL;
    tl_system sys;
    traj_shape sh;
    if (system_view(Ad_obj, Bd_obj, &Ad, &Bd, &sys) < 0)
        return NULL;
    if (convert_float_args(fa, 2, &typenum) < 0)
        goto fail;
    if (check_traj_shape(fa[0].arr, fa[1].arr, sys.n, sys.m, &sh) < 0)
        goto fail;
    if (check_finite && (check_all_finite(&fa[0]) < 0 || check_all_finite(&fa[1]) < 0))
        goto fail;

    states = new_traj_array(&sh, sh.steps + 1, sys.n, typenum, 1);
    work = PyMem_RawMalloc(tl_rollout_work_bytes(sys.n));
    if (states == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    tl_status status;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_DOUBLE)
        status = tl_rollout_f64(&sys, sh.batch, sh.steps, PyArray_DATA(fa[0].arr),
                                PyArray_DATA(fa[1].arr), PyArray_DATA(states), work);
    else
        status = tl_rollout_f32(&sys, sh.batch, sh.steps, PyArray_DATA(fa[0].arr),
                                PyArray_DATA(fa[1].arr), PyArray_DATA(states), work);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "rollout");
        goto fail;
    }
    PyMem_RawFree(work);
    release_float_args(fa, 2);
    Py_DECREF(Ad);
    Py_DECREF(Bd);
    return (PyObject *)states;
fail:
    PyMem_RawFree(work);
    release_float_args(fa, 2);
    Py_XDECREF(Ad);
    Py_XDECREF(Bd);
    Py_XDECREF(states);
    return NULL;
}

static PyObject *core_rollout_vjp(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"Ad", "Bd", "x0", "controls", "grad_states", "check_finite", NULL};
    PyObject *Ad_obj, *Bd_obj;
    float_arg fa[3] = {{"x0", NULL, NULL, 0},
                       {"controls", NULL, NULL, 0},
                       {"grad_states", NULL, NULL, 0}};
    int check_finite = 1, typenum;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|p:rollout_vjp", kwlist, &Ad_obj,
                                     &Bd_obj, &fa[0].obj, &fa[1].obj, &fa[2].obj,
                                     &check_finite))
        return NULL;

    PyArrayObject *Ad = NULL, *Bd = NULL, *gu = NULL, *gx = NULL;
    void *work = NULL;
    tl_system sys;
    traj_shape sh;
    if (system_view(Ad_obj, Bd_obj, &Ad, &Bd, &sys) < 0)
        return NULL;
    if (convert_float_args(fa, 3, &typenum) < 0)
        goto fail;
    if (check_traj_shape(fa[0].arr, fa[1].arr, sys.n, sys.m, &sh) < 0)
        goto fail;
    {
        PyArrayObject *g = fa[2].arr;
        npy_intp want[3] = {sh.batch, sh.steps + 1, sys.n};
        const npy_intp *w = sh.batched ? want : want + 1;
        int nd = sh.batched ? 3 : 2;
        if (PyArray_NDIM(g) != nd || memcmp(PyArray_DIMS(g), w, nd * sizeof(npy_intp)) != 0) {
            char s1[SHAPE_BUF], s2[SHAPE_BUF];
            PyErr_Format(PyExc_ValueError,
                         "grad_states must have the shape of the states, %s, got shape %s",
                         shape_str(nd, w, s1, sizeof s1), ARRAY_SHAPE(g, s2));
            goto fail;
        }
    }
    if (check_finite && (check_all_finite(&fa[0]) < 0 || check_all_finite(&fa[1]) < 0 ||
                         check_all_finite(&fa[2]) < 0))
        goto fail;

    gu = new_traj_array(&sh, sh.steps, sys.m, typenum, 1);
    gx = new_traj_array(&sh, 0, sys.n, typenum, 0);
    work = PyMem_RawMalloc(tl_rollout_work_bytes(sys.n));
    if (gu == NULL || gx == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    tl_status status;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_DOUBLE)
        status = tl_rollout_vjp_f64(&sys, sh.batch, sh.steps, PyArray_DATA(fa[2].arr),
                                    PyArray_DATA(gu), PyArray_DATA(gx), work);
    else
        status = tl_rollout_vjp_f32(&sys, sh.batch, sh.steps, PyArray_DATA(fa[2].arr),
                                    PyArray_DATA(gu), PyArray_DATA(gx), work);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "rollout_vjp");
        goto fail;
    }
    PyMem_RawFree(work);
    release_float_args(fa, 3);
    Py_DECREF(Ad);
    Py_DECREF(Bd);
    return Py_BuildValue("(NN)", gu, gx);
fail:
    PyMem_RawFree(work);
    release_float_args(fa, 3);
    Py_XDECREF(Ad);
    Py_XDECREF(Bd);
    Py_XDECREF(gu);
    Py_XDECREF(gx);
    return NULL;
}

/* ---- module ------------------------------------------------------------ */

static PyMethodDef core_methods[] = {
    {"expm", core_expm, METH_VARARGS,
     "expm(A) -> E\n\nMatrix exponential of a square float64 matrix (Pade, scaling and squaring)."},
    {"discretize", (PyCFunction)(void (*)(void))core_discretize, METH_VARARGS | METH_KEYWORDS,
     "discretize(A, B, dt, method='zoh') -> (Ad, Bd)"},
    {"check_system", core_check_system, METH_VARARGS,
     "check_system(Ad, Bd, sq_name='Ad', in_name='Bd') -> (Ad, Bd)\n\n"
     "Validated float64 C-contiguous copies of an (n, n) and an (n, m) matrix."},
    {"rollout", (PyCFunction)(void (*)(void))core_rollout, METH_VARARGS | METH_KEYWORDS,
     "rollout(Ad, Bd, x0, controls, check_finite=True) -> states"},
    {"rollout_vjp", (PyCFunction)(void (*)(void))core_rollout_vjp, METH_VARARGS | METH_KEYWORDS,
     "rollout_vjp(Ad, Bd, x0, controls, grad_states, check_finite=True) -> (grad_controls, grad_x0)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "trajloss._core",
    "The trajloss C core: validation and conversion around csrc/.", -1, core_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *linalg = PyImport_ImportModule("numpy.linalg");
    if (linalg == NULL)
        return NULL;
    LinAlgError = PyObject_GetAttrString(linalg, "LinAlgError");
    Py_DECREF(linalg);
    if (LinAlgError == NULL)
        return NULL;

    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddStringConstant(module, "CORE_VERSION", TL_VERSION) < 0 ||
        PyModule_AddStringConstant(module, "LAPACK_PROVIDER", TL_LAPACK_PROVIDER) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DIM", TL_MAX_DIM) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
