/*
 * _coremodule.c -- trajloss._core, the only C file that knows Python.
 *
 * Every entry point follows the same path: parse -> validate and convert the
 * arguments (naming the argument in every error) -> allocate the outputs and
 * the scratch space while holding the GIL -> release the GIL around the C
 * core -> map its status code to an exception. There is no maths here. The
 * rollouts and losses are rows of one table (ENTRIES) that take that path
 * through one function (run_entry); expm, discretize, time_weights and the
 * references have calls of their own.
 *
 * Systems arrive as system._core = (Ad, Bd, offset, time_varying) (see
 * parse_system) and become one tl_dynamics.
 *
 * Dtype policy for trajectory arrays (x0, controls, states, gradients):
 *   - ndarrays and other array-likes must be float32 or float64, and all of
 *     them in one call must share that dtype (TypeError names the odd one);
 *   - plain Python lists, tuples and numbers are "weak": they may hold ints
 *     and adopt the call's dtype (float64 when nothing else decides);
 *   - arrays are copied only when they are not already C-contiguous, aligned
 *     and of the right dtype.
 * System matrices (A, B, Ad, Bd, offset) accept any real numeric array-like
 * and are stored as float64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#define NPY_TARGET_VERSION NPY_1_25_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdarg.h>
#include <string.h>
#ifndef _WIN32
#include <pthread.h> /* pthread_atfork */
#include <time.h>    /* clock_gettime: the interrupt poll's throttle */
#else
#include <windows.h> /* GetTickCount64 */
#endif

#include "trajloss.h"
#include "xla_ffi.h"

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
    case TL_ERR_NONFINITE:
        type = PyExc_ValueError;
        break;
    case TL_ERR_SINGULAR:
        type = LinAlgError;
        break;
    case TL_ERR_NOMEM:
        type = PyExc_MemoryError;
        break;
    case TL_ERR_INTERRUPTED:
        /* poll_signals stopped the call: the signal handler's exception
         * (KeyboardInterrupt for Ctrl-C) is already set; never replace it. */
        if (PyErr_Occurred())
            return;
        type = PyExc_KeyboardInterrupt;
        break;
    default:
        type = PyExc_RuntimeError;
        break;
    }
    PyErr_Format(type, "%s: %s", context, tl_status_message(status));
}

/* ---- Ctrl-C during long C calls ---------------------------------------- */

/* State of one call's interrupt poll: the monotonic time of the last check. */
typedef struct {
    double last;
} poll_state;

static double monotonic_seconds(void)
{
#ifdef _WIN32
    return (double)GetTickCount64() * 1e-3;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* tl_cancel.poll for calls made with the GIL released: at most every 50 ms,
 * take the GIL and run Python's pending signal handlers. A nonzero return
 * (the handler raised, e.g. KeyboardInterrupt for SIGINT) stops the core with
 * TL_ERR_INTERRUPTED and leaves the exception set for set_status_error.
 * Handlers only run on the main thread; elsewhere this never cancels. */
static int poll_signals(void *ctx)
{
    poll_state *state = (poll_state *)ctx;
    const double now = monotonic_seconds();
    if (now - state->last < 0.05)
        return 0;
    state->last = now;
    PyGILState_STATE gil = PyGILState_Ensure();
    const int raised = PyErr_CheckSignals() < 0;
    PyGILState_Release(gil);
    return raised;
}

/* A tl_cancel that polls Python's signals through `state`. */
static tl_cancel signal_cancel(poll_state *state)
{
    state->last = monotonic_seconds();
    return (tl_cancel){poll_signals, state};
}

/* ValueError with a C format (PyErr_Format has no float conversions). */
static void value_error(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    PyErr_SetString(PyExc_ValueError, buf);
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
/* 2^44 elements (128 TiB of float64): far beyond any machine, far below overflow.
 * Only a broadcast (zero-stride) view can claim more; it is refused by name. */
#define MAX_ELEMENTS ((npy_intp)1 << 44)
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

/*
 * -1 with a TypeError naming the argument when obj is a numpy.ma.MaskedArray:
 * the core reads an array's data, so a mask would be silently ignored. Plain
 * ndarrays cost one pointer comparison; only subclasses ask numpy.ma.
 */
static int refuse_masked(PyObject *obj, const char *name)
{
    if (!PyArray_Check(obj) || PyArray_CheckExact(obj))
        return 0;
    PyObject *ma = PyImport_ImportModule("numpy.ma");
    PyObject *masked = ma ? PyObject_GetAttrString(ma, "MaskedArray") : NULL;
    Py_XDECREF(ma);
    if (masked == NULL)
        return -1;
    const int is = PyObject_IsInstance(obj, masked);
    Py_DECREF(masked);
    if (is == 1)
        PyErr_Format(PyExc_TypeError,
                     "%s is a numpy.ma.MaskedArray, whose mask trajloss would not read: "
                     "pass plain arrays (e.g. %s.filled(0)) and give the valid steps "
                     "as lengths= or mask=", name, name);
    return is == 0 ? 0 : -1;
}

/* obj as an array (no copy of an ndarray), or NULL with an exception naming
 * the argument; masked arrays are refused. */
static PyArrayObject *named_array(PyObject *obj, const char *name)
{
    if (refuse_masked(obj, name) < 0)
        return NULL;
    PyArrayObject *arr = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (arr == NULL)
        reraise_with_name(name, "cannot be converted to an array");
    return arr;
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

/* -1 with a ValueError naming the argument when arr claims more than
 * MAX_ELEMENTS elements (only a broadcast view can; no copy of it could exist). */
static int refuse_huge(PyArrayObject *arr, const char *name)
{
    if (PyArray_SIZE(arr) <= MAX_ELEMENTS)
        return 0;
    char s[SHAPE_BUF];
    PyErr_Format(PyExc_ValueError,
                 "%s has shape %s: too large to process (the maximum is %lld elements)", name,
                 ARRAY_SHAPE(arr, s), (long long)MAX_ELEMENTS);
    return -1;
}

/* Can the core read arr in place as typenum: C-contiguous, aligned, native order? */
static int in_place(PyArrayObject *arr, int typenum)
{
    return PyArray_TYPE(arr) == typenum && PyArray_ISCARRAY_RO(arr) &&
           PyArray_ISNOTSWAPPED(arr);
}

/*
 * obj itself (a new reference) when it is already an ndarray the core can
 * read in place as typenum (as float32 or float64 when typenum < 0); NULL
 * otherwise, without an error. The common case of a training loop, so it
 * skips NumPy's general conversion.
 */
static PyArrayObject *ready_array(PyObject *obj, int typenum)
{
    if (!PyArray_CheckExact(obj)) /* subclasses go through named_array's checks */
        return NULL;
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (!(typenum >= 0 ? in_place(arr, typenum)
                       : in_place(arr, NPY_DOUBLE) || in_place(arr, NPY_FLOAT)))
        return NULL;
    Py_INCREF(obj);
    return arr;
}

static void release_float_args(float_arg *args, int count)
{
    for (int i = 0; i < count; i++)
        Py_CLEAR(args[i].arr);
}

/*
 * Turn every args[i].obj into an array args[i].arr (no copy of an ndarray,
 * whatever its layout) and decide the call's dtype (*typenum), checking each
 * argument's kind. The shapes are checked next, on these views, and only
 * then does contiguous_float_args copy what needs copying: a wrongly shaped
 * broadcast view is refused before gigabytes are copied. On failure an
 * exception is set, the arrays are released, and -1 is returned.
 */
static int wrap_float_args(float_arg *args, int count, int *typenum)
{
    int first_strong = -1;
    for (int i = 0; i < count; i++) {
        if (args[i].obj == NULL) /* an optional argument that was not given */
            continue;
        args[i].weak = is_weak(args[i].obj);
        args[i].arr = ready_array(args[i].obj, -1);
        if (args[i].arr == NULL && (args[i].arr = named_array(args[i].obj, args[i].name)) == NULL)
            goto fail;
        if (refuse_huge(args[i].arr, args[i].name) < 0)
            goto fail;
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
    return 0;
fail:
    release_float_args(args, count);
    return -1;
}

/* Make each wrapped array C-contiguous, aligned and native in typenum
 * (a copy only when it is not already). -1 with an exception on failure. */
static int contiguous_float_args(float_arg *args, int count, int typenum)
{
    for (int i = 0; i < count; i++) {
        if (args[i].arr == NULL || in_place(args[i].arr, typenum))
            continue;
        int flags = NPY_ARRAY_CARRAY_RO | (args[i].weak ? NPY_ARRAY_FORCECAST : 0);
        PyArrayObject *c = (PyArrayObject *)PyArray_FromAny(
            (PyObject *)args[i].arr, PyArray_DescrFromType(typenum), 0, 0, flags, NULL);
        if (c == NULL) {
            release_float_args(args, count);
            return -1;
        }
        Py_SETREF(args[i].arr, c);
    }
    return 0;
}

/* Are all values of a contiguous float32/float64 array finite? (No Python
 * API: callable without the GIL.) */
static int array_finite(PyArrayObject *arr)
{
    return PyArray_TYPE(arr) == NPY_DOUBLE
               ? tl_all_finite_f64((const double *)PyArray_DATA(arr), PyArray_SIZE(arr))
               : tl_all_finite_f32((const float *)PyArray_DATA(arr), PyArray_SIZE(arr));
}

/* -1 with ValueError if a converted (contiguous) array holds NaN or inf. */
static int check_all_finite(const float_arg *arg)
{
    if (arg->arr == NULL || array_finite(arg->arr))
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s contains NaN or inf; pass check_finite=False to let them propagate",
                 arg->name);
    return -1;
}

/* -1 with ValueError if the first lengths[b] steps (of `width` elements) of
 * row b of a converted (B, T, width) array hold NaN or inf; every step when
 * lengths is NULL. */
static int check_read_prefix_finite(const float_arg *arg, npy_intp batch, npy_intp steps,
                                    npy_intp width, const int64_t *lengths)
{
    if (lengths == NULL)
        return check_all_finite(arg);
    const int f64 = PyArray_TYPE(arg->arr) == NPY_DOUBLE;
    const char *data = PyArray_DATA(arg->arr);
    const npy_intp row = steps * width * (f64 ? 8 : 4);
    for (npy_intp b = 0; b < batch; b++) {
        const ptrdiff_t count = (ptrdiff_t)lengths[b] * width;
        if (!(f64 ? tl_all_finite_f64((const double *)(data + b * row), count)
                  : tl_all_finite_f32((const float *)(data + b * row), count))) {
            PyErr_Format(PyExc_ValueError,
                         "%s contains NaN or inf at a step before its sequence's length; pass "
                         "check_finite=False to let them propagate",
                         arg->name);
            return -1;
        }
    }
    return 0;
}

/*
 * The losses let the core check the elements they read as it reads them
 * (spec check_finite): padding is never read, so never checked, and the data
 * streams from memory once. When the core says TL_ERR_NONFINITE, `bad` (the
 * core's tl_*_bad_inputs: one bit per argument, in the order of `bits`)
 * names the first of args that holds NaN or inf where it is read.
 */
static void set_nonfinite_error(unsigned bad, const float_arg *args, const unsigned *bits,
                                int count)
{
    for (int i = 0; i < count; i++)
        if (bad & bits[i]) {
            PyErr_Format(PyExc_ValueError,
                         "%s contains NaN or inf at a step the loss reads; pass "
                         "check_finite=False to let them propagate",
                         args[i].name);
            return;
        }
    set_status_error(TL_ERR_NONFINITE, "loss");
}

/* Scratch of `bytes` (0 means a size computation would overflow). */
static void *loss_work(size_t bytes, const char *what)
{
    if (bytes == 0) {
        PyErr_Format(PyExc_MemoryError, "%s: the arrays are too large to process", what);
        return NULL;
    }
    void *work = PyMem_RawMalloc(bytes);
    if (work == NULL)
        PyErr_NoMemory();
    return work;
}

/* ---- results that overflowed ------------------------------------------ */

/*
 * Finite inputs can still give results beyond the range of their dtype: an
 * unstable system over a long horizon, a float32 gradient past FLT_MAX, a
 * float64 square past DBL_MAX. As NumPy does ("overflow encountered in ..."),
 * such a result comes with a RuntimeWarning naming the function and the
 * outputs, never as a silent inf/NaN. Only when the inputs were checked:
 * with check_finite=False, NaN in is NaN out, without a word.
 *
 * nonfinite_outputs runs without the GIL (it only reads array fields) and
 * returns bit i set when outputs[i] (NULL: skipped) holds NaN or inf.
 */
static unsigned nonfinite_outputs(int count, PyArrayObject *const *outputs)
{
    unsigned bad = 0;
    for (int i = 0; i < count; i++)
        if (outputs[i] != NULL && !array_finite(outputs[i]))
            bad |= 1u << i;
    return bad;
}

/* The warning for the outputs whose bit is set in `bad`; -1 when the warning
 * filters turned it into an exception. */
static int warn_overflow(unsigned bad, const char *context, int count, const char *const *names)
{
    if (bad == 0)
        return 0;
    char list[256] = "";
    size_t used = 0;
    for (int i = 0; i < count && used < sizeof list; i++)
        if (bad & (1u << i))
            used += (size_t)PyOS_snprintf(list + used, sizeof list - used, "%s%s",
                                          used ? ", " : "", names[i]);
    return PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                            "%s: overflow: %s holds inf or NaN although every input is finite "
                            "(the result is beyond the range of its dtype)",
                            context, list);
}

/* ---- system matrices: any real numbers, stored as float64 -------------- */

/* A fresh float64 C-contiguous copy of obj (any real numbers, all finite), or
 * NULL with an exception naming the argument. */
static PyArrayObject *real_array(PyObject *obj, const char *name)
{
    PyArrayObject *arr = named_array(obj, name);
    if (arr == NULL)
        return NULL;
    if (refuse_huge(arr, name) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    int type = PyArray_TYPE(arr);
    if (!(PyTypeNum_ISINTEGER(type) || PyTypeNum_ISFLOAT(type))) {
        PyErr_Format(PyExc_TypeError, "%s must hold real numbers, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *c = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(NPY_DOUBLE), 0, 0,
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

/* real_array restricted to 2-D matrices. */
static PyArrayObject *matrix_arg(PyObject *obj, const char *name)
{
    PyArrayObject *c = real_array(obj, name);
    if (c != NULL && PyArray_NDIM(c) != 2) {
        char s[SHAPE_BUF];
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D matrix, got shape %s", name,
                     ARRAY_SHAPE(c, s));
        Py_CLEAR(c);
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

/* -1 with ValueError unless arr has the shape (B, rows, cols) -- (rows, cols)
 * when unbatched; rows < 0 leaves the middle dimension out. */
static int check_traj_array(PyArrayObject *arr, const char *name, const traj_shape *sh,
                            npy_intp rows, npy_intp cols, const char *like)
{
    npy_intp want[3];
    int nd = 0;
    if (sh->batched)
        want[nd++] = sh->batch;
    if (rows >= 0)
        want[nd++] = rows;
    want[nd++] = cols;
    if (PyArray_NDIM(arr) == nd && memcmp(PyArray_DIMS(arr), want, nd * sizeof(npy_intp)) == 0)
        return 0;
    char s1[SHAPE_BUF], s2[SHAPE_BUF];
    PyErr_Format(PyExc_ValueError, "%s must have the shape of %s, %s, got shape %s", name, like,
                 shape_str(nd, want, s1, sizeof s1), ARRAY_SHAPE(arr, s2));
    return -1;
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


/* ---- the system: system._core -> tl_dynamics ---------------------------- */

/*
 * Every entry point that takes a system takes system._core, the tuple
 * (Ad, Bd, offset, time_varying) of src/trajloss/systems.py:
 *   time-invariant: Ad (n, n) | (B, n, n), Bd (n, m) | (B, n, m), offset None | (n,) | (B, n)
 *   time-varying:   Ad (T, n, n) | (B, T, n, n), Bd (T, n, m) | (B, T, n, m),
 *                   offset None | (T, n) | (B, T, n)
 * each independently shared by the batch (batch stride 0) or per sample. It
 * becomes one tl_dynamics with those strides, read in place. The tuple of a
 * trajloss system is of the type trajloss.systems registers (set_system_type)
 * and holds read-only arrays whose values were checked when the system was
 * made: they are not checked again (a scan as long as the matrices of a
 * time-varying system per sample). Any other tuple -- the frameworks'
 * helpers make some -- is checked on every call and copied unless it is
 * float64 C order.
 */
typedef struct {
    PyArrayObject *arr[3]; /* owned: Ad, Bd, offset (NULL when absent) */
    tl_dynamics dyn;
} system_arg;

static const char *const SYSTEM_FIELDS[3] = {"Ad", "Bd", "offset"};
static const int FIELD_NDIM[3] = {2, 2, 1}; /* of one matrix (vector) */
static const char *const FIELD_SHAPES[2][3] = {
    {"(n, n) or (B, n, n)", "(n, m) or (B, n, m)", "(n,) or (B, n)"},
    {"(T, n, n) or (B, T, n, n)", "(T, n, m) or (B, T, n, m)", "(T, n) or (B, T, n)"}};

static PyTypeObject *system_type; /* trajloss.systems._SystemCore, set once at its import */

static PyObject *core_set_system_type(PyObject *self, PyObject *type)
{
    (void)self;
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "set_system_type: a tuple subclass is required");
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(system_type, (PyTypeObject *)type);
    Py_RETURN_NONE;
}

static void release_system(system_arg *s)
{
    for (int i = 0; i < 3; i++)
        Py_CLEAR(s->arr[i]);
}

/* Field i of the tuple as float64 C-contiguous finite values, or NULL with an
 * exception naming "system: Ad" (Bd, offset). */
static PyArrayObject *system_field(PyObject *obj, int i, int trusted)
{
    static const char *const names[3] = {"system: Ad", "system: Bd", "system: offset"};
    PyArrayObject *arr = ready_array(obj, NPY_DOUBLE);
    if (arr == NULL)
        return real_array(obj, names[i]); /* checked and copied */
    trusted = trusted && !PyArray_ISWRITEABLE(arr); /* made writeable again: look */
    if (!trusted && !tl_all_finite_f64((const double *)PyArray_DATA(arr), PyArray_SIZE(arr))) {
        PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", names[i]);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* The dimensions of field i (n, m from Ad, Bd) and its strides; -1 with a
 * ValueError naming the system when its shape is not one of its forms. */
static int system_field_layout(system_arg *s, int i, int tv, int *from_batch, int *from_steps)
{
    tl_dynamics *d = &s->dyn;
    PyArrayObject *a = s->arr[i];
    const int nd = PyArray_NDIM(a), core_nd = FIELD_NDIM[i], shared_nd = core_nd + tv;
    const npy_intp *dims = PyArray_DIMS(a);
    char sh[SHAPE_BUF];
    int ok = nd == shared_nd || nd == shared_nd + 1;
    if (ok) {
        const npy_intp *core = dims + nd - core_nd;
        if (i == 0) {
            ok = core[0] == core[1] && core[0] >= 1 && core[0] <= TL_MAX_DIM;
            d->n = core[0];
        } else if (i == 1) {
            ok = core[0] == d->n && core[1] >= 1 && core[1] <= TL_MAX_DIM;
            d->m = core[1];
        } else {
            ok = core[0] == d->n;
        }
    }
    if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "system: %s must have shape %s (1 <= n, m <= %d; Bd and offset with "
                     "Ad's n), got shape %s",
                     SYSTEM_FIELDS[i], FIELD_SHAPES[tv][i], TL_MAX_DIM, ARRAY_SHAPE(a, sh));
        return -1;
    }
    const int per_sample = nd == shared_nd + 1;
    npy_intp matrix = 1, sample = 1;
    for (int k = nd - core_nd; k < nd; k++)
        matrix *= dims[k];
    for (int k = per_sample; k < nd; k++)
        sample *= dims[k];
    tl_field *f = i == 0 ? &d->A : i == 1 ? &d->B : &d->c;
    f->data = (const double *)PyArray_DATA(a);
    f->batch_stride = per_sample ? sample : 0;
    f->step_stride = tv ? matrix : 0;
    if (per_sample) {
        if (dims[0] < 1 || (d->batch != 0 && dims[0] != d->batch)) {
            PyErr_Format(PyExc_ValueError,
                         "system: %s holds B = %zd samples but %s holds B = %zd: the per-sample "
                         "arrays of a system must agree (and B >= 1)",
                         SYSTEM_FIELDS[i], (Py_ssize_t)dims[0],
                         SYSTEM_FIELDS[*from_batch < 0 ? i : *from_batch], (Py_ssize_t)d->batch);
            return -1;
        }
        d->batch = dims[0];
        *from_batch = i;
    }
    if (tv) {
        const npy_intp t = dims[nd - core_nd - 1];
        if (t < 1 || (d->steps != 0 && t != d->steps)) {
            PyErr_Format(PyExc_ValueError,
                         "system: %s has T = %zd steps but %s has T = %zd: the arrays of a "
                         "time-varying system must agree (and T >= 1)",
                         SYSTEM_FIELDS[i], (Py_ssize_t)t,
                         SYSTEM_FIELDS[*from_steps < 0 ? i : *from_steps], (Py_ssize_t)d->steps);
            return -1;
        }
        d->steps = t;
        *from_steps = i;
    }
    return 0;
}

/* obj (system._core) as s->dyn, its arrays owned by s; -1 with an exception
 * naming the system. */
static int parse_system(PyObject *obj, system_arg *s)
{
    memset(s, 0, sizeof *s); /* a linear tl_dynamics: reserved slots NULL */
    s->dyn.kind = TL_DYN_LINEAR;
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 4) {
        PyErr_Format(PyExc_TypeError,
                     "system must be a trajloss system's _core tuple (Ad, Bd, offset, "
                     "time_varying), got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const int tv = PyObject_IsTrue(PyTuple_GET_ITEM(obj, 3));
    if (tv < 0)
        return -1;
    const int trusted = system_type != NULL && Py_TYPE(obj) == system_type;
    int from_batch = -1, from_steps = -1;
    for (int i = 0; i < 3; i++) {
        PyObject *item = PyTuple_GET_ITEM(obj, i);
        if (i == 2 && item == Py_None)
            continue;
        if ((s->arr[i] = system_field(item, i, trusted)) == NULL ||
            system_field_layout(s, i, tv, &from_batch, &from_steps) < 0) {
            release_system(s);
            return -1;
        }
    }
    return 0;
}

/* -1 with a ValueError naming the system and both sizes when a per-sample
 * system's B is not the data's, or a time-varying system's T not the controls'. */
static int system_fits(const system_arg *s, const traj_shape *sh)
{
    const tl_dynamics *d = &s->dyn;
    if (d->batch != 0 && d->batch != sh->batch) {
        if (sh->batched)
            PyErr_Format(PyExc_ValueError,
                         "system holds B = %zd systems (one per sample) but the data has batch "
                         "size %zd",
                         (Py_ssize_t)d->batch, (Py_ssize_t)sh->batch);
        else
            PyErr_Format(PyExc_ValueError,
                         "system holds B = %zd systems (one per sample) but the data is one "
                         "unbatched sequence (batch size 1)",
                         (Py_ssize_t)d->batch);
        return -1;
    }
    if (d->steps != 0 && d->steps != sh->steps) {
        PyErr_Format(PyExc_ValueError,
                     "system is time-varying over T = %zd steps but the controls have T = %zd "
                     "steps",
                     (Py_ssize_t)d->steps, (Py_ssize_t)sh->steps);
        return -1;
    }
    return 0;
}

/* ---- _core.expm -------------------------------------------------------- */

static PyObject *core_expm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *result = NULL;
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
        goto done;
    }
    E = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(A), NPY_DOUBLE, 0);
    work = PyMem_RawMalloc(tl_expm_work_bytes(n));
    if (E == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto done;
    }
    tl_status status;
    unsigned bad = 0;
    poll_state poll;
    const tl_cancel cancel = signal_cancel(&poll);
    Py_BEGIN_ALLOW_THREADS
    status = tl_expm(n, (const double *)PyArray_DATA(A), (double *)PyArray_DATA(E), work,
                     &cancel);
    if (status == TL_OK)
        bad = nonfinite_outputs(1, &E);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "expm");
        goto done;
    }
    if (warn_overflow(bad, "expm", 1, (const char *const[]){"the exponential"}) < 0)
        goto done;
    result = (PyObject *)E;
    E = NULL;

done:
    PyMem_RawFree(work);
    Py_XDECREF(A);
    Py_XDECREF(E);
    return result;
}

/* ---- _core.discretize ------------------------------------------------- */

static const char *const DISC_METHODS[TL_DISC_COUNT] = {"zoh", "euler", "rk4"};

static PyObject *core_discretize(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    PyObject *result = NULL;
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
        goto done;
    }
    tl_status status;
    unsigned bad = 0;
    poll_state poll;
    const tl_cancel cancel = signal_cancel(&poll);
    Py_BEGIN_ALLOW_THREADS
    status = tl_discretize((tl_disc_method)method, n, m, (const double *)PyArray_DATA(A),
                           (const double *)PyArray_DATA(B), dt, (double *)PyArray_DATA(Ad),
                           (double *)PyArray_DATA(Bd), work, &cancel);
    if (status == TL_OK)
        bad = nonfinite_outputs(2, (PyArrayObject *const[]){Ad, Bd});
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "discretize");
        goto done;
    }
    if (warn_overflow(bad, "discretize", 2, (const char *const[]){"Ad", "Bd"}) < 0)
        goto done;
    result = Py_BuildValue("(OO)", Ad, Bd);

done:
    PyMem_RawFree(work);
    Py_XDECREF(A);
    Py_XDECREF(B);
    Py_XDECREF(Ad);
    Py_XDECREF(Bd);
    return result;
}

/* ---- selection, penalty and per-feature weights ----------------------- */

/* A real, finite number from obj (not a bool), or -1 with an exception. */
static int real_arg(PyObject *obj, const char *name, double *out)
{
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    if (PyBool_Check(obj) || PyComplex_Check(obj) || !PyNumber_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, got %R", name, obj);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a real number, got %R", name, obj);
        return -1;
    }
    return 0;
}

/* The arrays a tl_selection points into, owned here. */
typedef struct {
    PyArrayObject *lengths;
    PyArrayObject *mask;
} selection_arrays;

static void release_selection(selection_arrays *owned)
{
    Py_CLEAR(owned->lengths);
    Py_CLEAR(owned->mask);
}

/*
 * Fill sel from discount (None = 1), lengths ((B,) integers in [0, T]; a
 * single integer when unbatched) and mask ((B, T) or (T,), bool or integer,
 * nonzero = valid). Returns -1 with an exception naming the argument.
 */
static int parse_selection(PyObject *discount, PyObject *lengths, PyObject *mask, int batched,
                           npy_intp batch, npy_intp steps, tl_selection *sel,
                           selection_arrays *owned)
{
    char s1[SHAPE_BUF];
    sel->batch = batch;
    sel->steps = steps;
    sel->lengths = NULL;
    sel->mask = NULL;
    sel->discount = 1.0;
    owned->lengths = owned->mask = NULL;
    if (discount != Py_None) {
        if (real_arg(discount, "discount", &sel->discount) < 0)
            return -1;
        if (!isfinite(sel->discount) || sel->discount <= 0.0) {
            PyErr_Format(PyExc_ValueError, "discount must be a finite number > 0 or None, got %R",
                         discount);
            return -1;
        }
    }
    if (lengths != Py_None && mask != Py_None) {
        PyErr_SetString(PyExc_ValueError, "give lengths or mask, not both");
        return -1;
    }
    if (lengths != Py_None) {
        PyArrayObject *arr = named_array(lengths, "lengths");
        if (arr == NULL) {
            return -1;
        }
        owned->lengths = arr;
        if (!PyTypeNum_ISINTEGER(PyArray_TYPE(arr))) {
            PyErr_Format(PyExc_TypeError, "lengths must hold integers, got dtype %S",
                         (PyObject *)PyArray_DESCR(arr));
            goto fail;
        }
        if (batched ? (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != batch)
                    : PyArray_NDIM(arr) != 0) {
            if (batched)
                PyErr_Format(PyExc_ValueError,
                             "lengths must have shape (B,) = (%" NPY_INTP_FMT ",), got shape %s",
                             batch, ARRAY_SHAPE(arr, s1));
            else
                PyErr_Format(PyExc_ValueError,
                             "lengths must be a single integer for unbatched inputs, got shape %s",
                             ARRAY_SHAPE(arr, s1));
            goto fail;
        }
        if (PyTypeNum_ISUNSIGNED(PyArray_TYPE(arr)) && PyArray_ITEMSIZE(arr) == 8) {
            /* values past INT64_MAX would wrap to negatives in the int64 copy */
            PyArrayObject *u = (PyArrayObject *)PyArray_FromAny(
                (PyObject *)arr, PyArray_DescrFromType(NPY_UINT64), 0, 0, NPY_ARRAY_CARRAY_RO, NULL);
            if (u == NULL)
                goto fail;
            const uint64_t *v = (const uint64_t *)PyArray_DATA(u);
            for (npy_intp b = 0; b < batch; b++)
                if (v[b] > (uint64_t)steps) {
                    PyErr_Format(PyExc_ValueError,
                                 "lengths must lie in [0, T] = [0, %" NPY_INTP_FMT "], got %llu at "
                                 "index %" NPY_INTP_FMT, steps, (unsigned long long)v[b], b);
                    Py_DECREF(u);
                    goto fail;
                }
            Py_DECREF(u);
        }
        Py_SETREF(owned->lengths, (PyArrayObject *)PyArray_FromAny(
                                      (PyObject *)arr, PyArray_DescrFromType(NPY_INT64), 0, 0,
                                      NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST, NULL));
        if (owned->lengths == NULL)
            goto fail;
        const int64_t *len = (const int64_t *)PyArray_DATA(owned->lengths);
        for (npy_intp b = 0; b < batch; b++) {
            if (len[b] < 0 || len[b] > steps) {
                PyErr_Format(PyExc_ValueError,
                             "lengths must lie in [0, T] = [0, %" NPY_INTP_FMT "], got %lld at index %"
                             NPY_INTP_FMT, steps, (long long)len[b], b);
                goto fail;
            }
        }
        sel->lengths = len;
    }
    if (mask != Py_None) {
        PyArrayObject *arr = named_array(mask, "mask");
        if (arr == NULL) {
            return -1;
        }
        owned->mask = arr;
        int type = PyArray_TYPE(arr);
        if (type != NPY_BOOL && !PyTypeNum_ISINTEGER(type)) {
            PyErr_Format(PyExc_TypeError, "mask must be boolean (or integer), got dtype %S",
                         (PyObject *)PyArray_DESCR(arr));
            goto fail;
        }
        npy_intp want[2] = {batch, steps};
        int nd = batched ? 2 : 1;
        const npy_intp *w = batched ? want : want + 1;
        if (PyArray_NDIM(arr) != nd || memcmp(PyArray_DIMS(arr), w, nd * sizeof(npy_intp)) != 0) {
            char s2[SHAPE_BUF];
            PyErr_Format(PyExc_ValueError, "mask must have shape %s (%s), got shape %s",
                         shape_str(nd, w, s1, sizeof s1), batched ? "B, T" : "T",
                         ARRAY_SHAPE(arr, s2));
            goto fail;
        }
        Py_SETREF(owned->mask, (PyArrayObject *)PyArray_FromAny(
                                   (PyObject *)arr, PyArray_DescrFromType(NPY_BOOL), 0, 0,
                                   NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST, NULL));
        if (owned->mask == NULL)
            goto fail;
        sel->mask = (const unsigned char *)PyArray_DATA(owned->mask);
    }
    return 0;
fail:
    release_selection(owned);
    return -1;
}

static const char *const PENALTIES[TL_PENALTY_COUNT] = {"mse", "l1", "huber"};

/* penalty and delta (NULL: "mse" and 1.0) into spec. */
static int parse_penalty(PyObject *penalty, PyObject *delta, tl_loss_spec *spec)
{
    spec->penalty = TL_PENALTY_MSE;
    spec->delta = 1.0;
    if (penalty == NULL && delta == NULL)
        return 0;
    Py_ssize_t len = 0;
    const char *name = penalty != NULL && PyUnicode_Check(penalty)
                           ? PyUnicode_AsUTF8AndSize(penalty, &len)
                           : NULL;
    int found = penalty == NULL ? TL_PENALTY_MSE : -1;
    for (int i = 0; name != NULL && i < TL_PENALTY_COUNT; i++)
        if ((size_t)len == strlen(PENALTIES[i]) && strcmp(name, PENALTIES[i]) == 0)
            found = i;
    if (found < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "penalty must be one of 'mse', 'l1', 'huber', got %R",
                     penalty);
        return -1;
    }
    spec->penalty = (tl_penalty)found;
    if (delta == NULL)
        return 0;
    if (real_arg(delta, "delta", &spec->delta) < 0)
        return -1;
    if (!isfinite(spec->delta) || spec->delta <= 0.0) {
        PyErr_Format(PyExc_ValueError, "delta must be a finite number > 0, got %R", delta);
        return -1;
    }
    return 0;
}

/* None (or NULL: not given), or a float64 copy of a (dim,) vector of finite
 * numbers >= 0. */
static int feature_weights_arg(PyObject *obj, const char *name, npy_intp dim,
                               PyArrayObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None)
        return 0;
    PyArrayObject *arr = named_array(obj, name);
    if (arr == NULL)
        return -1;
    if (refuse_huge(arr, name) < 0) {
        Py_DECREF(arr);
        return -1;
    }
    int type = PyArray_TYPE(arr);
    if (!(PyTypeNum_ISINTEGER(type) || PyTypeNum_ISFLOAT(type))) {
        PyErr_Format(PyExc_TypeError, "%s must hold real numbers, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return -1;
    }
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != dim) {
        char s[SHAPE_BUF];
        PyErr_Format(PyExc_ValueError, "%s must have shape (%" NPY_INTP_FMT ",), got shape %s",
                     name, dim, ARRAY_SHAPE(arr, s));
        Py_DECREF(arr);
        return -1;
    }
    *out = (PyArrayObject *)PyArray_FromAny((PyObject *)arr, PyArray_DescrFromType(NPY_DOUBLE),
                                            1, 1, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(arr);
    if (*out == NULL)
        return -1;
    const double *p = (const double *)PyArray_DATA(*out);
    for (npy_intp i = 0; i < dim; i++) {
        if (!(isfinite(p[i]) && p[i] >= 0.0)) {
            PyObject *bad = PyFloat_FromDouble(p[i]);
            if (bad != NULL) {
                PyErr_Format(PyExc_ValueError, "%s must be finite and >= 0, got %R at index %"
                             NPY_INTP_FMT, name, bad, i);
                Py_DECREF(bad);
            }
            Py_CLEAR(*out);
            return -1;
        }
    }
    return 0;
}

static void set_loss_error(tl_status status, const char *context)
{
    if (status == TL_ERR_EMPTY)
        PyErr_Format(PyExc_ValueError,
                     "%s: no valid step in the batch: every sequence has lengths 0 or an "
                     "all-False mask, or the batch is empty", context);
    else
        set_status_error(status, context);
}

/* ---- _core.time_weights ----------------------------------------------- */

static PyObject *core_time_weights(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *result = NULL;
    Py_ssize_t steps;
    PyObject *discount, *lengths, *mask;
    if (!PyArg_ParseTuple(args, "nOOO:time_weights", &steps, &discount, &lengths, &mask))
        return NULL;
    if (steps < 0) {
        PyErr_Format(PyExc_ValueError, "T must be >= 0, got %zd", steps);
        return NULL;
    }
    /* batched when lengths is not a scalar or the mask is 2-D */
    int batched = 0;
    npy_intp batch = 1;
    if (lengths != Py_None || mask != Py_None) {
        PyArrayObject *probe = named_array(lengths != Py_None ? lengths : mask,
                                           lengths != Py_None ? "lengths" : "mask");
        if (probe == NULL)
            return NULL;
        batched = PyArray_NDIM(probe) == (lengths != Py_None ? 1 : 2);
        batch = batched ? PyArray_DIM(probe, 0) : 1;
        Py_DECREF(probe);
    }
    tl_selection sel;
    selection_arrays owned;
    if (parse_selection(discount, lengths, mask, batched, batch, steps, &sel, &owned) < 0)
        return NULL;
    npy_intp dims[2] = {batch, steps};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(batched ? 2 : 1, batched ? dims : dims + 1,
                                                        NPY_DOUBLE, 0);
    if (out != NULL && PyArray_SIZE(out) == 0) { /* no rows or no steps: nothing to weigh */
        release_selection(&owned);
        return (PyObject *)out;
    }
    void *work = out != NULL ? loss_work(tl_time_weights_work_bytes(steps), "time_weights") : NULL;
    if (out == NULL || work == NULL)
        goto done;
    tl_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tl_time_weights(&sel, (double *)PyArray_DATA(out), work);
    Py_END_ALLOW_THREADS
    if (status != TL_OK) {
        set_status_error(status, "time_weights");
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;

done:
    PyMem_RawFree(work);
    release_selection(&owned);
    Py_XDECREF(out);
    return result;
}

/* ---- worker threads and loss scratch ------------------------------------ */

/*
 * Threads the loss kernels use over the batch: set by set_num_threads, read
 * by every loss call (an int store is atomic on the platforms we build on;
 * a call racing a change uses either value, and both give the same result).
 */
static int loss_threads = 1;

/*
 * The worker threads of the loss calls, kept between calls (tl_pool in
 * trajloss.h): made at the first call with more than one thread, never
 * stopped -- idle, its threads sleep, and they end with the process. A
 * forked child does not have its parent's threads: it forgets the pool
 * (leaving its memory alone) and makes its own when it needs one.
 */
static tl_pool *loss_pool = NULL;

static tl_pool *loss_threads_pool(int threads)
{
    if (threads > 1 && loss_pool == NULL) {
        tl_pool *pool = (tl_pool *)PyMem_RawMalloc(tl_pool_bytes());
        if (pool != NULL && tl_pool_init(pool) == TL_OK)
            loss_pool = pool;
        else /* no pool: each call starts threads of its own */
            PyMem_RawFree(pool);
    }
    return loss_pool;
}

#ifndef _WIN32
static void forget_pool_in_child(void)
{
    loss_pool = NULL;
}
#endif

static PyObject *core_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    const long k = PyLong_AsLong(arg);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    if (k < 1 || k > 256) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, 256], got %ld", k);
        return NULL;
    }
    loss_threads = (int)k;
    Py_RETURN_NONE;
}

static PyObject *core_get_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(loss_threads);
}

/*
 * The named tuples combined_loss returns (trajloss.losses.LossResult and
 * LossComponents), registered once by that module and built here: making
 * them from Python with tuple.__new__ cost 0.4-0.5 us a call, a sixth of a
 * whole call at B = 1. Each must be a plain tuple subclass (no __dict__, no
 * extra slots) with the fields rollout_loss fills, in that order.
 */
static PyTypeObject *loss_result_type, *loss_components_type;

static int check_result_type(PyObject *obj, Py_ssize_t fields, const char *name)
{
    if (!PyType_Check(obj) || !PyType_IsSubtype((PyTypeObject *)obj, &PyTuple_Type) ||
        ((PyTypeObject *)obj)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)obj)->tp_dictoffset != 0) {
        PyErr_Format(PyExc_TypeError, "set_result_types: %s must be a named tuple class", name);
        return -1;
    }
    PyObject *f = PyObject_GetAttrString(obj, "_fields");
    const Py_ssize_t count = f != NULL ? PyObject_Length(f) : -1;
    Py_XDECREF(f);
    if (count != fields) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "set_result_types: %s must have %zd fields", name, fields);
        return -1;
    }
    return 0;
}

static PyObject *core_set_result_types(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *result, *components;
    if (!PyArg_ParseTuple(args, "OO:set_result_types", &result, &components) ||
        check_result_type(result, 4, "result") < 0 ||
        check_result_type(components, 6, "components") < 0)
        return NULL;
    Py_INCREF(result);
    Py_INCREF(components);
    Py_XSETREF(loss_result_type, (PyTypeObject *)result);
    Py_XSETREF(loss_components_type, (PyTypeObject *)components);
    Py_RETURN_NONE;
}

/* An instance of a registered named tuple from `count` new references (any
 * NULL: all released, NULL returned), as tuple.__new__ makes one. */
static PyObject *named_tuple(PyTypeObject *type, Py_ssize_t count, PyObject *const *items)
{
    PyObject *t = NULL;
    int ok = 1;
    for (Py_ssize_t i = 0; i < count; i++)
        ok &= items[i] != NULL;
    if (ok)
        t = type->tp_alloc(type, count);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (t != NULL)
            PyTuple_SET_ITEM(t, i, items[i]);
        else
            Py_XDECREF(items[i]);
    }
    return t;
}

/* ---- _core.control_loss ----------------------------------------------- */

/*
 * control_loss reads a 2-D pred as ONE unbatched sequence of shape (T, D):
 * axis 0 is time (the discount, lengths and mask run along it), axis 1 the
 * features. A (B, T) batch of scalar sequences is then misread, and lengths
 * or a mask shaped for B sequences say so: they are refused here with the
 * rule and the fix, before parse_selection's plainer shape message.
 */
static int check_unbatched_selection(PyObject *lengths, PyObject *mask, npy_intp T, npy_intp D)
{
    PyObject *objs[2] = {lengths, mask};
    const char *names[2] = {"lengths", "mask"};
    for (int i = 0; i < 2; i++) {
        if (objs[i] == Py_None)
            continue;
        PyArrayObject *arr = (PyArrayObject *)PyArray_FromAny(objs[i], NULL, 0, 0, 0, NULL);
        if (arr == NULL) { /* parse_selection names the argument */
            PyErr_Clear();
            continue;
        }
        const int fits = i == 0 ? PyArray_NDIM(arr) == 0
                                : PyArray_NDIM(arr) == 1 && PyArray_DIM(arr, 0) == T;
        char s1[SHAPE_BUF];
        if (!fits)
            PyErr_Format(PyExc_ValueError,
                         "%s: control_loss reads a 2-D pred of shape (T, D) = (%" NPY_INTP_FMT
                         ", %" NPY_INTP_FMT ") as one sequence of T = %" NPY_INTP_FMT
                         " steps of D = %" NPY_INTP_FMT " features (the discount, lengths "
                         "and mask run along axis 0), so %s must be %s, got shape %s; for a "
                         "batch of B sequences of T scalar steps pass pred[..., None] and "
                         "target[..., None], of shape (B, T, 1)",
                         names[i], T, D, T, D, names[i],
                         i == 0 ? "a single integer" : "of shape (T,)", ARRAY_SHAPE(arr, s1));
        Py_DECREF(arr);
        if (!fits)
            return -1;
    }
    return 0;
}

/* ---- rollouts and losses: one table of entry points, one path ------------ */

/*
 * Each rollout and loss entry point is a row of ENTRIES: its parameters (the
 * leading ones may be positional, the options are keywords), the trajectory
 * arrays it reads with their shapes in B, T, n, m (D, the features, is the
 * control loss's m), and the arrays it writes. run_entry is the one path
 * they all take:
 *   parse the arguments -> the system (system_arg) -> the arrays: one dtype,
 *   shapes, C order -> the selection, penalty and weights -> outputs and
 *   scratch -> release the GIL, one call of the core -> its status as an
 *   exception (a non-finite input named, an overflow warned of) -> result.
 */
typedef enum {
    OP_ROLLOUT,
    OP_ROLLOUT_VJP,
    OP_FINAL_STATE_ERROR,
    OP_CONTROL_LOSS,
    OP_ROLLOUT_LOSS,
    OP_COUNT
} op_kind;

/* The rows of ENTRIES: one Python function each. combined_loss is the
 * rollout loss of all three terms returning a LossResult: a row of its own, so
 * that its every-step call passes few keywords (CPython builds a dict for a
 * call of many). */
typedef enum {
    E_ROLLOUT,
    E_ROLLOUT_VJP,
    E_FINAL_STATE_ERROR,
    E_CONTROL_LOSS,
    E_ROLLOUT_LOSS,
    E_COMBINED_LOSS,
    E_COUNT
} entry_id;

/* Where each argument lands, whichever entry point takes it. The control
 * loss's pred and target are the controls and reference controls of
 * tl_loss_io; final_state_error's xf is a target. */
typedef enum {
    A_SYSTEM, A_X0, A_CONTROLS, A_GRAD_STATES, A_REF_CONTROLS, A_REF_STATES, A_TARGET,
    A_TERMS, A_CONTROL_WEIGHT, A_TRAJECTORY_WEIGHT, A_TERMINAL_WEIGHT, A_INCLUDE_INITIAL,
    A_DISCOUNT, A_LENGTHS, A_MASK, A_PENALTY, A_DELTA, A_FEATURE_WEIGHTS, A_STATE_WEIGHTS,
    A_CHECK_FINITE, A_TARGET_NAME, A_WANT_GRAD, A_KERNEL,
    A_COUNT
} arg_slot;

/* An array's extents after the batch axis: rows (absent, T, T + 1) and columns
 * (absent, n, m). */
typedef enum { R_NONE, R_T, R_T1 } rows_kind;
typedef enum { C_NONE, C_N, C_M } cols_kind;

typedef struct {
    const char *name;
    arg_slot slot;
    int required;
} param;

typedef struct {
    arg_slot slot;
    rows_kind rows;
    cols_kind cols;
    const char *like; /* "must have the shape of <like>" */
} array_spec;

typedef struct {
    rows_kind rows;
    cols_kind cols;
    const char *name; /* in the overflow warning */
} output_spec;

/* How check_finite is honoured: every input element before the call, each
 * sequence's controls up to its length, or by the core as it reads. */
typedef enum { FIN_ALL, FIN_PREFIX, FIN_CORE } finite_kind;

#define MAX_PARAMS 24 /* at most 32: parse_call keeps a bit a parameter */
#define MAX_ARRAYS 5
#define MAX_OUTPUTS 2

typedef struct {
    const char *name; /* the Python name */
    const char *context; /* in front of its status errors */
    op_kind op;
    int npos;            /* parameters that may be given by position */
    param params[MAX_PARAMS]; /* NULL-terminated */
    int narrays;
    /* the order names them in dtype and NaN errors; system entry points
     * start with x0 and controls, the control loss with pred: they set B, T */
    array_spec arrays[MAX_ARRAYS];
    int noutputs;
    output_spec outputs[MAX_OUTPUTS];
    finite_kind finite;
    /* the rollout losses' defaults: terms (0: terms= is required), the control
     * term's weight, and whether the result is a LossResult */
    unsigned terms;
    double control_weight;
    int combined;
} entry;

#define P_CHECK_FINITE {"check_finite", A_CHECK_FINITE, 0}
#define P_SELECTION {"discount", A_DISCOUNT, 0}, {"lengths", A_LENGTHS, 0}, {"mask", A_MASK, 0}
#define P_PENALTY {"penalty", A_PENALTY, 0}, {"delta", A_DELTA, 0}
#define P_KERNEL {"kernel", A_KERNEL, 0} /* last: a private option, rarely given */

#define P_ROLLOUT_LOSS_OPTIONS                                                                   \
    {"terminal_weight", A_TERMINAL_WEIGHT, 0}, {"include_initial", A_INCLUDE_INITIAL, 0},         \
        P_SELECTION, P_PENALTY, {"feature_weights", A_FEATURE_WEIGHTS, 0},                        \
        {"state_weights", A_STATE_WEIGHTS, 0}, P_CHECK_FINITE
#define ROLLOUT_LOSS_ARRAYS(target_like)                                                         \
    5, {{A_X0, R_NONE, C_N, NULL}, {A_CONTROLS, R_T, C_M, NULL},                                  \
        {A_REF_CONTROLS, R_T, C_M, "controls"}, {A_REF_STATES, R_T1, C_N, "the states"},          \
        {A_TARGET, R_NONE, C_N, target_like}},                                                   \
        2, {{R_T, C_M, "grad_controls"}, {R_NONE, C_N, "grad_x0"}}, FIN_CORE

static const entry ENTRIES[E_COUNT] = {
    [E_ROLLOUT] = {"rollout", "rollout", OP_ROLLOUT, 3,
                   {{"system", A_SYSTEM, 1}, {"x0", A_X0, 1}, {"controls", A_CONTROLS, 1},
                    P_CHECK_FINITE, {NULL, 0, 0}},
                   2, {{A_X0, R_NONE, C_N, NULL}, {A_CONTROLS, R_T, C_M, NULL}},
                   1, {{R_T1, C_N, "the states"}}, FIN_ALL, 0, 0.0, 0},
    [E_ROLLOUT_VJP] = {"rollout_vjp", "rollout_vjp", OP_ROLLOUT_VJP, 4,
                       {{"system", A_SYSTEM, 1}, {"x0", A_X0, 1}, {"controls", A_CONTROLS, 1},
                        {"grad_states", A_GRAD_STATES, 1}, P_CHECK_FINITE, {NULL, 0, 0}},
                       3, {{A_X0, R_NONE, C_N, NULL}, {A_CONTROLS, R_T, C_M, NULL},
                           {A_GRAD_STATES, R_T1, C_N, "the states"}},
                       2, {{R_T, C_M, "grad_controls"}, {R_NONE, C_N, "grad_x0"}}, FIN_ALL,
                       0, 0.0, 0},
    [E_FINAL_STATE_ERROR] = {"final_state_error", "final_state_error", OP_FINAL_STATE_ERROR, 4,
                             {{"system", A_SYSTEM, 1}, {"controls", A_CONTROLS, 1},
                              {"x0", A_X0, 1}, {"xf", A_TARGET, 1}, {"lengths", A_LENGTHS, 0},
                              P_CHECK_FINITE, {NULL, 0, 0}},
                             3, {{A_X0, R_NONE, C_N, NULL}, {A_CONTROLS, R_T, C_M, NULL},
                                 {A_TARGET, R_NONE, C_N, "x0"}},
                             1, {{R_NONE, C_NONE, "the error"}}, FIN_PREFIX, 0, 0.0, 0},
    [E_CONTROL_LOSS] = {"control_loss", "control_loss", OP_CONTROL_LOSS, 2,
                        {{"pred", A_CONTROLS, 1}, {"target", A_REF_CONTROLS, 1}, P_SELECTION,
                         P_PENALTY, {"feature_weights", A_FEATURE_WEIGHTS, 0}, P_CHECK_FINITE,
                         {"want_grad", A_WANT_GRAD, 0}, P_KERNEL, {NULL, 0, 0}},
                        2, {{A_CONTROLS, R_T, C_M, NULL}, {A_REF_CONTROLS, R_T, C_M, "pred"}},
                        1, {{R_T, C_M, "the gradient"}}, FIN_CORE, TL_TERM_CONTROL, 1.0, 0},
    [E_ROLLOUT_LOSS] = {"rollout_loss", "loss", OP_ROLLOUT_LOSS, 6,
                        {{"system", A_SYSTEM, 1}, {"controls", A_CONTROLS, 1}, {"x0", A_X0, 1},
                         {"ref_controls", A_REF_CONTROLS, 0}, {"ref_states", A_REF_STATES, 0},
                         {"target", A_TARGET, 0}, {"terms", A_TERMS, 1},
                         {"control_weight", A_CONTROL_WEIGHT, 0},
                         {"trajectory_weight", A_TRAJECTORY_WEIGHT, 0}, P_ROLLOUT_LOSS_OPTIONS,
                         {"target_name", A_TARGET_NAME, 0}, P_KERNEL, {NULL, 0, 0}},
                        ROLLOUT_LOSS_ARRAYS("x0"), 0, 0.0, 0},
    [E_COMBINED_LOSS] = {"combined_loss", "loss", OP_ROLLOUT_LOSS, 6,
                         {{"system", A_SYSTEM, 1}, {"controls", A_CONTROLS, 1}, {"x0", A_X0, 1},
                          {"ref_controls", A_REF_CONTROLS, 1}, {"ref_states", A_REF_STATES, 1},
                          {"terminal_target", A_TARGET, 0}, {"weight", A_TRAJECTORY_WEIGHT, 1},
                          P_ROLLOUT_LOSS_OPTIONS, P_KERNEL, {NULL, 0, 0}},
                         ROLLOUT_LOSS_ARRAYS("x0"),
                         TL_TERM_CONTROL | TL_TERM_TRAJECTORY | TL_TERM_TERMINAL, 1.0, 1},
};
#undef P_ROLLOUT_LOSS_OPTIONS
#undef ROLLOUT_LOSS_ARRAYS

/* Made at import from ENTRIES: each row's parameter names, interned (keywords
 * are found by pointer, as CPython's own parsers do), their count, and which
 * parameter fills each slot (-1: none). */
static PyObject *param_keys[E_COUNT][MAX_PARAMS];
static int param_count[E_COUNT];
static uint32_t required_params[E_COUNT]; /* bit j: parameter j is required */
static signed char slot_param[E_COUNT][A_COUNT];

static int index_entries(void)
{
    for (int row = 0; row < E_COUNT; row++) {
        memset(slot_param[row], -1, sizeof slot_param[row]);
        for (int j = 0; ENTRIES[row].params[j].name != NULL; j++) {
            if ((param_keys[row][j] = PyUnicode_InternFromString(ENTRIES[row].params[j].name)) == NULL)
                return -1;
            slot_param[row][ENTRIES[row].params[j].slot] = (signed char)j;
            required_params[row] |= ENTRIES[row].params[j].required ? 1u << j : 0u;
            param_count[row] = j + 1;
        }
    }
    return 0;
}

/* The parameter named key, searched from `hint` on (callers pass keywords in
 * the table's order, so the next one is usually the first looked at). */
static int find_param(const entry *e, PyObject *key, int hint)
{
    const ptrdiff_t row = e - ENTRIES;
    const int count = param_count[row];
    for (int c = 0, j = hint; c < count; c++, j = j + 1 < count ? j + 1 : 0)
        if (param_keys[row][j] == key)
            return j;
    for (int j = 0; j < count; j++)
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, e->params[j].name) == 0)
            return j;
    return -1;
}

/* Vectorcall arguments into slot[A_*] (borrowed; NULL: not given). */
static int parse_call(const entry *e, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      PyObject **slot)
{
    const ptrdiff_t row = e - ENTRIES;
    for (int i = 0; i < A_COUNT; i++)
        slot[i] = NULL;
    if (nargs > e->npos) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %d positional arguments (%zd given); the options are "
                     "keyword-only",
                     e->name, e->npos, nargs);
        return -1;
    }
    uint32_t given = 0; /* bit j: parameter j has a value */
    for (Py_ssize_t i = 0; i < nargs; i++) {
        slot[e->params[i].slot] = args[i];
        given |= 1u << i;
    }
    const Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    int hint = (int)nargs;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        const int j = find_param(e, key, hint < param_count[row] ? hint : 0);
        if (j < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", e->name,
                         key);
            return -1;
        }
        if (given & (1u << j)) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", e->name,
                         e->params[j].name);
            return -1;
        }
        slot[e->params[j].slot] = args[nargs + k];
        given |= 1u << j;
        hint = j + 1;
    }
    if ((given & required_params[row]) != required_params[row]) {
        for (int j = 0; j < param_count[row]; j++)
            if (e->params[j].required && !(given & (1u << j))) {
                PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", e->name,
                             e->params[j].name);
                break;
            }
        return -1;
    }
    return 0;
}

/* The parameter of a row that fills `slot` (each array of a row is one). */
static const param *find_slot(const entry *e, arg_slot slot)
{
    return &e->params[slot_param[e - ENTRIES][slot]];
}

/* An option's truth value (dflt when not given); -1 with an exception. */
static int flag_arg(PyObject *obj, int dflt, int *out)
{
    *out = obj == NULL ? dflt : obj == Py_True ? 1 : obj == Py_False ? 0 : PyObject_IsTrue(obj);
    return *out < 0 ? -1 : 0;
}

static int double_arg(PyObject *obj, const char *name, double dflt, double *out)
{
    *out = obj == NULL ? dflt : PyFloat_CheckExact(obj) ? PyFloat_AS_DOUBLE(obj) : dflt;
    return obj == NULL || PyFloat_CheckExact(obj) ? 0 : real_arg(obj, name, out);
}

static const char *const KERNELS[TL_KERNEL_COUNT] = {"auto", "reference"};

static int kernel_arg(PyObject *obj, tl_kernel *out)
{
    *out = TL_KERNEL_AUTO;
    if (obj == NULL)
        return 0;
    for (int i = 0; i < TL_KERNEL_COUNT; i++)
        if (PyUnicode_Check(obj) && PyUnicode_CompareWithASCIIString(obj, KERNELS[i]) == 0) {
            *out = (tl_kernel)i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "kernel must be 'auto' or 'reference', got %R", obj);
    return -1;
}

/* The TL_IN_* bit tl_loss_bad_inputs reports an argument with. */
static unsigned input_bit(arg_slot slot)
{
    switch (slot) {
    case A_X0: return TL_IN_X0;
    case A_CONTROLS: return TL_IN_CONTROLS;
    case A_REF_CONTROLS: return TL_IN_REF_CONTROLS;
    case A_REF_STATES: return TL_IN_REF_STATES;
    case A_TARGET: return TL_IN_TARGET;
    default: return 0;
    }
}

static npy_intp rows_of(rows_kind r, const traj_shape *sh)
{
    return r == R_T ? sh->steps : r == R_T1 ? sh->steps + 1 : -1;
}

static npy_intp cols_of(cols_kind c, npy_intp n, npy_intp m)
{
    return c == C_N ? n : c == C_M ? m : 0;
}

/* An uninitialised output: the batch axis when batched, then rows and columns. */
static PyArrayObject *new_output(const output_spec *o, const traj_shape *sh, npy_intp n,
                                 npy_intp m, int typenum)
{
    if (o->cols == C_NONE) /* one number a sequence */
        return (PyArrayObject *)PyArray_EMPTY(sh->batched, &sh->batch, typenum, 0);
    return new_traj_array(sh, rows_of(o->rows, sh), cols_of(o->cols, n, m), typenum,
                          o->rows != R_NONE);
}

/*
 * The leading arrays give B, T and the sizes: x0 (B, n) and controls (B, T, m)
 * against the system; the control loss's pred (B, T, D) on its own. Then each
 * further array has its row's shape. *m is D for the control loss.
 */
static int check_call_shapes(const entry *e, const system_arg *sys, float_arg *fa,
                             traj_shape *sh, npy_intp *n, npy_intp *m)
{
    int first = 2;
    if (sys != NULL) {
        *n = sys->dyn.n;
        *m = sys->dyn.m;
        if (check_traj_shape(fa[0].arr, fa[1].arr, *n, *m, sh) < 0 || system_fits(sys, sh) < 0)
            return -1;
    } else {
        PyArrayObject *pred = fa[0].arr;
        const int nd = PyArray_NDIM(pred);
        if ((nd != 2 && nd != 3) || PyArray_DIM(pred, nd - 1) < 1) {
            char s[SHAPE_BUF];
            PyErr_Format(PyExc_ValueError,
                         "pred must have shape (B, T, D) or (T, D) with D >= 1, got shape %s",
                         ARRAY_SHAPE(pred, s));
            return -1;
        }
        *sh = (traj_shape){nd == 3, nd == 3 ? PyArray_DIM(pred, 0) : 1, PyArray_DIM(pred, nd - 2)};
        *n = 0;
        *m = PyArray_DIM(pred, nd - 1);
        first = 1;
    }
    for (int i = first; i < e->narrays; i++) {
        const array_spec *a = &e->arrays[i];
        if (fa[i].arr != NULL &&
            check_traj_array(fa[i].arr, fa[i].name, sh, rows_of(a->rows, sh),
                             cols_of(a->cols, *n, *m), a->like) < 0)
            return -1;
    }
    return 0;
}

/* What a loss call needs besides its arrays: selection, penalty, term weights,
 * feature and state weights, threads, kernel. The arrays the spec points into
 * are owned by `owned`, fw and sw. */
static int loss_spec(const entry *e, PyObject *const *a, const traj_shape *sh, npy_intp n,
                     npy_intp m, int check_finite, tl_loss_spec *spec, selection_arrays *owned,
                     PyArrayObject **fw, PyArrayObject **sw)
{
    PyObject *discount = a[A_DISCOUNT] ? a[A_DISCOUNT] : Py_None;
    PyObject *lengths = a[A_LENGTHS] ? a[A_LENGTHS] : Py_None;
    PyObject *mask = a[A_MASK] ? a[A_MASK] : Py_None;
    const int control = e->op == OP_CONTROL_LOSS;
    if ((control && !sh->batched && check_unbatched_selection(lengths, mask, sh->steps, m) < 0) ||
        parse_selection(discount, lengths, mask, sh->batched, sh->batch, sh->steps, &spec->sel,
                        owned) < 0 ||
        parse_penalty(a[A_PENALTY], a[A_DELTA], spec) < 0 || kernel_arg(a[A_KERNEL], &spec->kernel) < 0 ||
        feature_weights_arg(a[A_FEATURE_WEIGHTS], "feature_weights", m, fw) < 0 ||
        (!control && feature_weights_arg(a[A_STATE_WEIGHTS], "state_weights", n, sw) < 0))
        return -1;
    spec->feature_weights = *fw ? (const double *)PyArray_DATA(*fw) : NULL;
    spec->state_weights = *sw ? (const double *)PyArray_DATA(*sw) : NULL;
    spec->check_finite = check_finite; /* the core checks each element as it reads it */
    spec->threads = loss_threads;
    spec->pool = loss_threads_pool(spec->threads);
    spec->terms = e->terms; /* the rollout losses' terms_arg may say otherwise */
    if (control) {
        spec->control_weight = e->control_weight;
        return 0;
    }
    int include_initial;
    if (double_arg(a[A_CONTROL_WEIGHT], "control_weight", e->control_weight,
                   &spec->control_weight) < 0 ||
        double_arg(a[A_TRAJECTORY_WEIGHT], find_slot(e, A_TRAJECTORY_WEIGHT)->name, 0.0,
                   &spec->trajectory_weight) < 0 ||
        double_arg(a[A_TERMINAL_WEIGHT], "terminal_weight", 0.0, &spec->terminal_weight) < 0 ||
        flag_arg(a[A_INCLUDE_INITIAL], 0, &include_initial) < 0)
        return -1;
    spec->include_initial = include_initial;
    return 0;
}

/* The rollout loss's terms (bit flags; obj NULL: the row's); -1 with an
 * exception. Bits beyond the three terms reach the core, which refuses them
 * (TL_ERR_VALUE). */
static int terms_arg(const entry *e, PyObject *obj, const float_arg *fa, unsigned *terms)
{
    const unsigned long t = obj == NULL ? e->terms : PyLong_AsUnsignedLong(obj);
    if (t == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    *terms = t > 7 ? 8u : (unsigned)t;
    /* fa: x0, controls, ref_controls, ref_states, target */
    if (((*terms & TL_TERM_CONTROL) && !fa[2].arr) || ((*terms & TL_TERM_TRAJECTORY) && !fa[3].arr) ||
        ((*terms & TL_TERM_TERMINAL) && !fa[3].arr && !fa[4].arr)) {
        PyErr_SetString(PyExc_ValueError, "rollout_loss: a requested term is missing its reference");
        return -1;
    }
    return 0;
}

/* The result of a successful call. */
static PyObject *entry_result(op_kind op, PyArrayObject **out, const tl_loss_value *v,
                              const tl_loss_spec *spec, int combined)
{
    switch (op) {
    case OP_ROLLOUT:
    case OP_FINAL_STATE_ERROR:
        Py_INCREF(out[0]);
        return (PyObject *)out[0];
    case OP_ROLLOUT_VJP:
        return Py_BuildValue("(OO)", out[0], out[1]);
    case OP_CONTROL_LOSS:
        return out[0] == NULL ? PyFloat_FromDouble(v->total)
                              : Py_BuildValue("(dO)", v->total, out[0]);
    default:
        break;
    }
    if (!combined)
        return Py_BuildValue("(ddddOO)", v->total, v->control, v->trajectory, v->terminal, out[0],
                             out[1]);
    Py_INCREF(out[0]);
    Py_INCREF(out[1]);
    PyObject *parts[6] = {PyFloat_FromDouble(v->control), PyFloat_FromDouble(v->trajectory),
                          PyFloat_FromDouble(v->terminal), PyFloat_FromDouble(spec->trajectory_weight),
                          PyFloat_FromDouble(spec->terminal_weight), PyFloat_FromDouble(v->total)};
    PyObject *items[4] = {PyFloat_FromDouble(v->total), (PyObject *)out[0], (PyObject *)out[1],
                          named_tuple(loss_components_type, 6, parts)};
    return named_tuple(loss_result_type, 4, items);
}

/* The one path of every row of ENTRIES (see above). Inlined into each entry
 * point with its row a constant, so the compiler folds the row's table reads
 * and the branches of the other kinds away (the parse of a call at B = 1 costs
 * about what the positional calls it replaced did). */
static inline __attribute__((always_inline)) PyObject *
run_entry(const entry *e, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const op_kind op = e->op;
    const int is_loss = op == OP_CONTROL_LOSS || op == OP_ROLLOUT_LOSS;
    PyObject *a[A_COUNT];
    int check_finite, want_grad, typenum;
    const char *target_name = NULL;
    if (parse_call(e, args, nargs, kwnames, a) < 0 || flag_arg(a[A_CHECK_FINITE], 1, &check_finite) < 0 ||
        flag_arg(a[A_WANT_GRAD], 1, &want_grad) < 0 ||
        (a[A_TARGET_NAME] != NULL && (target_name = PyUnicode_AsUTF8(a[A_TARGET_NAME])) == NULL))
        return NULL;
    if (e->combined && loss_result_type == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: set_result_types was never called", e->name);
        return NULL;
    }

    PyObject *result = NULL;
    system_arg sys = {{NULL, NULL, NULL}};
    float_arg fa[MAX_ARRAYS];
    selection_arrays owned = {NULL, NULL};
    PyArrayObject *fw = NULL, *sw = NULL, *out[MAX_OUTPUTS] = {NULL, NULL};
    void *work = NULL;
    tl_loss_spec spec = {0};
    tl_loss_value value = {0};
    traj_shape sh;
    npy_intp n, m;
    unsigned terms = 0;
    for (int i = 0; i < e->narrays; i++) {
        const arg_slot s = e->arrays[i].slot;
        const param *p = find_slot(e, s);
        const int absent = a[s] == Py_None && !p->required; /* a term's reference: None */
        fa[i] = (float_arg){s == A_TARGET && target_name != NULL ? target_name : p->name,
                            absent ? NULL : a[s], NULL, 0};
    }
    if (op != OP_CONTROL_LOSS && parse_system(a[A_SYSTEM], &sys) < 0)
        return NULL;
    if (wrap_float_args(fa, e->narrays, &typenum) < 0)
        goto done;
    if (check_call_shapes(e, op != OP_CONTROL_LOSS ? &sys : NULL, fa, &sh, &n, &m) < 0 ||
        contiguous_float_args(fa, e->narrays, typenum) < 0)
        goto done;
    if (op == OP_ROLLOUT_LOSS && terms_arg(e, a[A_TERMS], fa, &terms) < 0)
        goto done;
    if (is_loss && loss_spec(e, a, &sh, n, m, check_finite, &spec, &owned, &fw, &sw) < 0)
        goto done;
    if (op == OP_ROLLOUT_LOSS)
        spec.terms = terms;
    if (op == OP_FINAL_STATE_ERROR &&
        parse_selection(Py_None, a[A_LENGTHS] ? a[A_LENGTHS] : Py_None, Py_None, sh.batched,
                        sh.batch, sh.steps, &spec.sel, &owned) < 0)
        goto done;
    /* inputs the core does not check itself (controls after a length are not read) */
    if (check_finite && e->finite != FIN_CORE) {
        for (int i = 0; i < e->narrays; i++)
            if ((e->finite == FIN_PREFIX && e->arrays[i].slot == A_CONTROLS)
                    ? check_read_prefix_finite(&fa[i], sh.batch, sh.steps, m, spec.sel.lengths) < 0
                    : check_all_finite(&fa[i]) < 0)
                goto done;
    }
    for (int i = 0; i < e->noutputs; i++)
        if (!(op == OP_CONTROL_LOSS && !want_grad) &&
            (out[i] = new_output(&e->outputs[i], &sh, n, m, typenum)) == NULL)
            goto done;
    if (is_loss && (sh.batch == 0 || sh.steps == 0)) { /* nothing to score, whatever the sizes */
        set_loss_error(TL_ERR_EMPTY, e->context);
        goto done;
    }
    const tl_dynamics *dyn = op == OP_CONTROL_LOSS ? NULL : &sys.dyn;
    work = loss_work(is_loss ? tl_loss_work_bytes(dyn, m, &spec) : tl_rollout_work_bytes(n, m),
                     e->context);
    if (work == NULL)
        goto done;

    const void *in[A_COUNT] = {NULL};
    for (int i = 0; i < e->narrays; i++)
        in[e->arrays[i].slot] = fa[i].arr != NULL ? PyArray_DATA(fa[i].arr) : NULL;
    void *o0 = out[0] != NULL ? PyArray_DATA(out[0]) : NULL;
    void *o1 = out[1] != NULL ? PyArray_DATA(out[1]) : NULL;
    const tl_dtype dtype = typenum == NPY_DOUBLE ? TL_F64 : TL_F32;
    const tl_loss_io io = {dtype, in[A_CONTROLS], in[A_X0], in[A_REF_CONTROLS],
                           in[A_REF_STATES], in[A_TARGET], o0, o1};
    const ptrdiff_t B = sh.batch, T = sh.steps;
    tl_status status = TL_OK;
    unsigned bad = 0;
    Py_BEGIN_ALLOW_THREADS
    switch (op) {
    case OP_ROLLOUT:
        status = tl_rollout(dyn, dtype, B, T, in[A_X0], in[A_CONTROLS], o0, work);
        break;
    case OP_ROLLOUT_VJP:
        status = tl_rollout_vjp(dyn, dtype, B, T, in[A_X0], in[A_CONTROLS], in[A_GRAD_STATES],
                                o0, o1, work);
        break;
    case OP_FINAL_STATE_ERROR:
        status = tl_final_state_error(dyn, dtype, B, T, spec.sel.lengths, in[A_CONTROLS],
                                      in[A_X0], in[A_TARGET], o0, work);
        break;
    case OP_CONTROL_LOSS:
        status = tl_control_loss(&spec, m, &io, &value, work);
        break;
    default:
        status = tl_rollout_loss(dyn, &spec, &io, &value, work);
        break;
    }
    if (status == TL_OK && check_finite && !is_loss)
        bad = nonfinite_outputs(e->noutputs, out);
    Py_END_ALLOW_THREADS

    if (status == TL_ERR_NONFINITE && is_loss) {
        unsigned bits[MAX_ARRAYS];
        for (int i = 0; i < e->narrays; i++)
            bits[i] = input_bit(e->arrays[i].slot);
        set_nonfinite_error(tl_loss_bad_inputs(dyn, m, &spec, &io), fa, bits, e->narrays);
        goto done;
    }
    if (status != TL_OK) {
        if (is_loss)
            set_loss_error(status, e->context);
        else
            set_status_error(status, e->context);
        goto done;
    }
    const char *names[1 + MAX_OUTPUTS] = {"the value"};
    const char *const *warn_names = names;
    int nwarn = e->noutputs;
    for (int i = 0; i < e->noutputs; i++)
        names[1 + i] = e->outputs[i].name;
    if (is_loss) {
        nwarn = 1 + e->noutputs;
        if (check_finite && value.nonfinite) /* rare: find out which output */
            bad = (isfinite(value.total) ? 0u : 1u) | nonfinite_outputs(e->noutputs, out) << 1;
    } else {
        warn_names = names + 1;
    }
    if (warn_overflow(bad, e->context, nwarn, warn_names) < 0)
        goto done;
    result = entry_result(op, out, &value, &spec, e->combined);

done:
    PyMem_RawFree(work);
    release_system(&sys);
    release_float_args(fa, e->narrays);
    release_selection(&owned);
    Py_XDECREF(fw);
    Py_XDECREF(sw);
    for (int i = 0; i < MAX_OUTPUTS; i++)
        Py_XDECREF(out[i]);
    return result;
}

#define ENTRY_POINT(fn, row)                                                                      \
    static PyObject *fn(PyObject *self, PyObject *const *args, Py_ssize_t nargs,                  \
                        PyObject *kwnames)                                                       \
    {                                                                                            \
        (void)self;                                                                              \
        return run_entry(&ENTRIES[row], args, nargs, kwnames);                                   \
    }
ENTRY_POINT(core_rollout, E_ROLLOUT)
ENTRY_POINT(core_rollout_vjp, E_ROLLOUT_VJP)
ENTRY_POINT(core_final_state_error, E_FINAL_STATE_ERROR)
ENTRY_POINT(core_control_loss, E_CONTROL_LOSS)
ENTRY_POINT(core_rollout_loss, E_ROLLOUT_LOSS)
ENTRY_POINT(core_combined_loss, E_COMBINED_LOSS)
#undef ENTRY_POINT

/* ---- _core.min_energy / _core.min_energy_law ------------------------- */

static void set_gramian_error(tl_status status, double cond, const char *context)
{
    if (status != TL_ERR_SINGULAR) {
        set_status_error(status, context);
        return;
    }
    char cbuf[32], lbuf[32];
    PyOS_snprintf(cbuf, sizeof cbuf, "%.3g", cond);
    PyOS_snprintf(lbuf, sizeof lbuf, "%.0e", TL_COND_LIMIT);
    PyErr_Format(LinAlgError,
                 "%s: the controllability Gramian is singular or ill-conditioned (condition "
                 "number %s, limit %s after equilibration): the system is not controllable "
                 "over this horizon, or the horizon is too long or too short for float64",
                 context, cbuf, lbuf);
}

/* The continuous law (or the continuous states) would cancel exponentials
 * that grow by `growth` over the horizon. */
static void set_growth_error(double growth, double horizon, const char *context, int both_ways)
{
    char gbuf[32], lbuf[32], hbuf[32];
    PyOS_snprintf(gbuf, sizeof gbuf, "%.3g", growth);
    PyOS_snprintf(lbuf, sizeof lbuf, "%.0e", TL_LAW_GROWTH_LIMIT);
    PyOS_snprintf(hbuf, sizeof hbuf, "%.6g", horizon);
    PyErr_Format(LinAlgError,
                 "%s: over the horizon %s, |e^(A t)|_1 grows to %s%s (limit %s): the states "
                 "would be the difference of terms that large, and float64 would lose more "
                 "than 1e-10 of the state scale to cancellation; use a shorter horizon",
                 context, hbuf, gbuf,
                 both_ways ? " forward and backward in time (the system has growing and "
                             "decaying modes)" : "",
                 lbuf);
}

/* "exact": C is rank-deficient, with the numbers of the rank test
 * (trajloss.h, tl_ref_rank); `where` names the sample of a per-sample system
 * ("" otherwise). */
static void set_rank_error(const tl_ref_rank *rk, npy_intp n, npy_intp m, npy_intp steps,
                           int time_varying, const char *where)
{
    const char *cdef = time_varying ? "C = [Ad_(T-1)...Ad_1 Bd_0, ..., Bd_(T-1)]"
                                    : "C = [Ad^(T-1) Bd ... Bd]";
    if (rk->rank < 0) {
        PyErr_Format(LinAlgError,
                     "min_energy%s: the controllability matrix %s (T = steps = %zd) is not "
                     "finite: %s overflows float64",
                     where, cdef, (Py_ssize_t)steps,
                     time_varying ? "the product Ad_(T-1)...Ad_1" : "Ad^(T-1)");
        return;
    }
    char tol[32], r1[32], rl[32], rn[32], ratio[32];
    PyOS_snprintf(tol, sizeof tol, "%.3g", rk->tol);
    PyOS_snprintf(r1, sizeof r1, "%.3g", rk->r_first);
    PyOS_snprintf(rl, sizeof rl, "%.3g", rk->r_last);
    PyOS_snprintf(rn, sizeof rn, "%.3g", rk->r_next);
    PyOS_snprintf(ratio, sizeof ratio, "%.3g",
                  rk->r_next > 0.0 ? rk->r_first / rk->r_next : INFINITY);
    const npy_intp cols = steps * m;
    PyErr_Format(LinAlgError,
                 "min_energy%s: the target is not reachable in %zd steps: the controllability "
                 "matrix %s (%zd x %zd, rows equilibrated) has "
                 "numerical rank %zd < n = %zd (column-pivoted QR of C^T: |R_11| = %s, last "
                 "diagonal entry kept %s, first refused %s, at or below the tolerance "
                 "max(n, steps*m) * eps * |R_11| = %s; condition number %s, estimated as "
                 "|R_11| / first refused)%s",
                 where, (Py_ssize_t)steps, cdef, (Py_ssize_t)n, (Py_ssize_t)cols,
                 (Py_ssize_t)rk->rank, (Py_ssize_t)n, r1, rl, rn, tol, ratio,
                 cols < n ? ": fewer controls than states" : "");
}

/* x0 (B, n) or (n,) and xf of the same shape, as float64 copies. */
static int boundary_states(PyObject *x0_obj, PyObject *xf_obj, npy_intp n, PyArrayObject **x0,
                           PyArrayObject **xf)
{
    char s1[SHAPE_BUF], s2[SHAPE_BUF];
    *x0 = real_array(x0_obj, "x0");
    *xf = *x0 ? real_array(xf_obj, "xf") : NULL;
    if (*xf == NULL)
        goto fail;
    int nd = PyArray_NDIM(*x0);
    if ((nd != 1 && nd != 2) || PyArray_DIM(*x0, nd - 1) != n) {
        PyErr_Format(PyExc_ValueError,
                     "x0 must have shape (B, n) or (n,) with n = %" NPY_INTP_FMT ", got shape %s",
                     n, ARRAY_SHAPE(*x0, s1));
        goto fail;
    }
    if (PyArray_NDIM(*xf) != nd ||
        memcmp(PyArray_DIMS(*xf), PyArray_DIMS(*x0), nd * sizeof(npy_intp)) != 0) {
        PyErr_Format(PyExc_ValueError, "xf must have the shape of x0, %s, got shape %s",
                     ARRAY_SHAPE(*x0, s1), ARRAY_SHAPE(*xf, s2));
        goto fail;
    }
    return 0;
fail:
    Py_CLEAR(*x0);
    Py_CLEAR(*xf);
    return -1;
}

static const char *const REF_METHODS[TL_REF_COUNT] = {"exact", "average", "continuous"};

/*
 * One array of a system's sampling period or continuous model (dt: rows =
 * cols = 0, a number; A: n x n, B: n x m), shared (that shape, or () for dt)
 * or per sample ((batch,) + that shape), as a tl_field over a float64 copy
 * owned in *arr; -1 with a ValueError naming "system: <name>" otherwise.
 */
static int model_field(PyObject *obj, const char *name, npy_intp rows, npy_intp cols,
                       npy_intp batch, PyArrayObject **arr, tl_field *f)
{
    char label[32], s[SHAPE_BUF];
    PyOS_snprintf(label, sizeof label, "system: %s", name);
    if ((*arr = real_array(obj, label)) == NULL)
        return -1;
    const int scalar = rows == 0; /* dt */
    const int core_nd = scalar ? 0 : 2, nd = PyArray_NDIM(*arr);
    const npy_intp *dims = PyArray_DIMS(*arr);
    int ok = nd == core_nd || nd == core_nd + 1;
    if (ok && !scalar)
        ok = dims[nd - 2] == rows && dims[nd - 1] == cols;
    if (ok && nd == core_nd + 1)
        ok = dims[0] == batch;
    if (!ok) {
        if (scalar)
            PyErr_Format(PyExc_ValueError,
                         "system: %s must be a number or hold one per sample, shape (%zd,), "
                         "got shape %s",
                         name, (Py_ssize_t)batch, ARRAY_SHAPE(*arr, s));
        else
            PyErr_Format(PyExc_ValueError,
                         "system: %s must have shape (%zd, %zd), or (%zd, %zd, %zd) with one per "
                         "sample of the batch, got shape %s",
                         name, (Py_ssize_t)rows, (Py_ssize_t)cols, (Py_ssize_t)batch,
                         (Py_ssize_t)rows, (Py_ssize_t)cols, ARRAY_SHAPE(*arr, s));
        Py_CLEAR(*arr);
        return -1;
    }
    f->data = (const double *)PyArray_DATA(*arr);
    f->batch_stride = nd == core_nd + 1 ? (scalar ? 1 : rows * cols) : 0;
    f->step_stride = 0;
    if (scalar)
        for (npy_intp i = 0; i < PyArray_SIZE(*arr); i++)
            if (!(f->data[i] > 0.0)) {
                value_error("system: dt must be > 0, got %g at index %zd", f->data[i],
                            (Py_ssize_t)i);
                Py_CLEAR(*arr);
                return -1;
            }
    return 0;
}

/* The message of a failed plan: which sample, for a per-sample system. */
static void set_plan_error(tl_status status, const tl_ref_info *info, int method,
                           const tl_dynamics *dyn, npy_intp steps, double horizon)
{
    char where[64] = "", context[96];
    if (info->plans > 1 || dyn->batch != 0)
        PyOS_snprintf(where, sizeof where, " (sample %zd of the per-sample system)",
                      (Py_ssize_t)info->sample);
    PyOS_snprintf(context, sizeof context, "min_energy%s", where);
    if (status == TL_ERR_SINGULAR && method == TL_REF_EXACT) {
        set_rank_error(&info->rank, dyn->n, dyn->m, steps, dyn->steps != 0, where);
    } else if (status == TL_ERR_SINGULAR && method == TL_REF_CONTINUOUS &&
               !(info->growth <= TL_LAW_GROWTH_LIMIT)) {
        PyOS_snprintf(context, sizeof context, "min_energy(method='continuous')%s", where);
        set_growth_error(info->growth, horizon, context, 0);
    } else {
        set_gramian_error(status, info->cond, context);
    }
}

/*
 * min_energy(system, A, B, dt, x0, xf, steps, method)
 *   -> (controls, states, final_error, energy, cond)
 * system is system._core, any linear form ("exact"); A (n, n) | (B, n, n)
 * and B (n, m) | (B, n, m) the continuous model of "average"/"continuous"
 * (None for "exact"); dt the period, a number or (B,) one per sample. One
 * plan for a shared system, one per sample otherwise (tl_min_energy); cond
 * is the largest of the plans'.
 */
static PyObject *core_min_energy(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *result = NULL;
    PyObject *sys_obj, *A_obj, *B_obj, *dt_obj, *x0_obj, *xf_obj;
    Py_ssize_t steps;
    const char *method_name;
    if (!PyArg_ParseTuple(args, "OOOOOOns:min_energy", &sys_obj, &A_obj, &B_obj, &dt_obj,
                          &x0_obj, &xf_obj, &steps, &method_name))
        return NULL;
    int method = -1;
    for (int i = 0; i < TL_REF_COUNT; i++)
        if (strcmp(method_name, REF_METHODS[i]) == 0)
            method = i;
    if (method < 0) {
        PyErr_Format(PyExc_ValueError,
                     "method must be one of 'exact', 'average', 'continuous', got '%s'",
                     method_name);
        return NULL;
    }
    if (steps < 1) {
        PyErr_Format(PyExc_ValueError, "steps must be >= 1, got %zd", steps);
        return NULL;
    }
    PyArrayObject *A = NULL, *B = NULL, *dt = NULL, *x0 = NULL, *xf = NULL;
    PyArrayObject *U = NULL, *S = NULL, *err = NULL, *energy = NULL;
    void *work = NULL;
    system_arg system;
    if (parse_system(sys_obj, &system) < 0)
        return NULL;
    const tl_dynamics *dyn = &system.dyn;
    const npy_intp n = dyn->n, m = dyn->m;
    if (boundary_states(x0_obj, xf_obj, n, &x0, &xf) < 0)
        goto done;
    const int batched = PyArray_NDIM(x0) == 2;
    const npy_intp batch = batched ? PyArray_DIM(x0, 0) : 1;
    traj_shape sh = {batched, batch, steps};
    if (system_fits(&system, &sh) < 0)
        goto done;
    tl_ref_model model = {{NULL, 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    if (method != TL_REF_EXACT) {
        if (dyn->steps != 0 || A_obj == Py_None || B_obj == Py_None) {
            PyErr_Format(PyExc_ValueError,
                         "system: method '%s' needs a continuous model (A, B): build the system "
                         "with LinearSystem.from_continuous%s", method_name,
                         dyn->steps != 0 ? " (a time-varying system has none)" : "");
            goto done;
        }
        if (model_field(A_obj, "A", n, n, batch, &A, &model.A) < 0 ||
            model_field(B_obj, "B", n, m, batch, &B, &model.B) < 0)
            goto done;
    }
    if (model_field(dt_obj, "dt", 0, 0, batch, &dt, &model.dt) < 0)
        goto done;
    U = new_traj_array(&sh, steps, m, NPY_DOUBLE, 1);
    S = new_traj_array(&sh, steps + 1, n, NPY_DOUBLE, 1);
    err = (PyArrayObject *)PyArray_EMPTY(batched, &sh.batch, NPY_DOUBLE, 0);
    energy = (PyArrayObject *)PyArray_EMPTY(batched, &sh.batch, NPY_DOUBLE, 0);
    if (U == NULL || S == NULL || err == NULL || energy == NULL)
        goto done;
    const size_t work_bytes = tl_min_energy_work_bytes(n, m, steps, (tl_ref_method)method);
    if (work_bytes == 0) {
        PyErr_SetString(PyExc_ValueError, "min_energy: steps or dimensions out of range");
        goto done;
    }
    if ((work = PyMem_RawMalloc(work_bytes)) == NULL) {
        char gib[32];
        PyOS_snprintf(gib, sizeof gib, "%.3g", (double)work_bytes / 1073741824.0);
        PyErr_Format(PyExc_MemoryError,
                     "min_energy: steps=%zd needs %s GiB of working memory for n=%zd, m=%zd "
                     "(it grows as steps * n * %s), which could not be allocated; use "
                     "fewer steps",
                     steps, gib, (Py_ssize_t)n, (Py_ssize_t)m,
                     method == TL_REF_EXACT ? "m" : "n");
        goto done;
    }
    tl_ref_info info;
    tl_status status;
    unsigned bad = 0;
    poll_state poll;
    const tl_cancel cancel = signal_cancel(&poll);
    Py_BEGIN_ALLOW_THREADS
    status = tl_min_energy((tl_ref_method)method, dyn, &model, steps, batch, PyArray_DATA(x0),
                           PyArray_DATA(xf), PyArray_DATA(U), PyArray_DATA(S), PyArray_DATA(err),
                           PyArray_DATA(energy), &info, work, &cancel);
    if (status == TL_OK)
        bad = nonfinite_outputs(4, (PyArrayObject *const[]){U, S, err, energy});
    Py_END_ALLOW_THREADS
    if (status == TL_ERR_INTERRUPTED) {
        set_status_error(status, "min_energy");
        goto done;
    }
    if (status != TL_OK) {
        const double period = ((const double *)PyArray_DATA(dt))[model.dt.batch_stride ? info.sample : 0];
        set_plan_error(status, &info, method, dyn, steps, steps * period);
        goto done;
    }
    if (warn_overflow(bad, "min_energy", 4,
                      (const char *const[]){"controls", "states", "final_error", "energy"}) < 0)
        goto done;
    PyObject *err_obj = PyArray_Return(err), *energy_obj = PyArray_Return(energy);
    err = energy = NULL; /* PyArray_Return took them */
    if (err_obj != NULL && energy_obj != NULL)
        result = Py_BuildValue("(OOOOd)", U, S, err_obj, energy_obj, info.cond);
    Py_XDECREF(err_obj);
    Py_XDECREF(energy_obj);

done:
    PyMem_RawFree(work);
    release_system(&system);
    Py_XDECREF(A), Py_XDECREF(B), Py_XDECREF(dt), Py_XDECREF(x0), Py_XDECREF(xf);
    Py_XDECREF(U), Py_XDECREF(S), Py_XDECREF(err), Py_XDECREF(energy);
    return result;
}

/* min_energy_law(A, B, horizon, x0, xf, times) -> (u, x) */
static PyObject *core_min_energy_law(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *result = NULL;
    PyObject *A_obj, *B_obj, *x0_obj, *xf_obj, *t_obj;
    double horizon;
    if (!PyArg_ParseTuple(args, "OOdOOO:min_energy_law", &A_obj, &B_obj, &horizon, &x0_obj,
                          &xf_obj, &t_obj))
        return NULL;
    if (!isfinite(horizon) || horizon <= 0.0) {
        value_error("horizon must be a finite number > 0, got %g", horizon);
        return NULL;
    }
    PyArrayObject *A = NULL, *B = NULL, *x0 = NULL, *xf = NULL, *t = NULL, *u = NULL, *x = NULL;
    void *work = NULL;
    if (system_pair(A_obj, B_obj, "A", "B", &A, &B) < 0)
        return NULL;
    const npy_intp n = PyArray_DIM(A, 0), m = PyArray_DIM(B, 1);
    if (boundary_states(x0_obj, xf_obj, n, &x0, &xf) < 0 || (t = real_array(t_obj, "t")) == NULL)
        goto done;
    if (PyArray_NDIM(t) > 1) {
        char s[SHAPE_BUF];
        PyErr_Format(PyExc_ValueError, "t must be a number or a 1-D array of times, got shape %s",
                     ARRAY_SHAPE(t, s));
        goto done;
    }
    const npy_intp nt = PyArray_SIZE(t);
    const double *tp = (const double *)PyArray_DATA(t);
    for (npy_intp i = 0; i < nt; i++)
        if (!(tp[i] >= 0.0 && tp[i] <= horizon)) {
            value_error("t must lie in [0, horizon] = [0, %g], got %g at index %" NPY_INTP_FMT,
                        horizon, tp[i], i);
            goto done;
        }
    const int batched = PyArray_NDIM(x0) == 2;
    traj_shape sh = {batched, batched ? PyArray_DIM(x0, 0) : 1, nt};
    const int with_t = PyArray_NDIM(t) == 1;
    u = new_traj_array(&sh, nt, m, NPY_DOUBLE, with_t);
    x = new_traj_array(&sh, nt, n, NPY_DOUBLE, with_t);
    work = PyMem_RawMalloc(tl_min_energy_law_work_bytes(n, m));
    if (u == NULL || x == NULL || work == NULL) {
        if (work == NULL)
            PyErr_NoMemory();
        goto done;
    }
    tl_law_info info;
    tl_status status;
    unsigned bad = 0;
    Py_BEGIN_ALLOW_THREADS
    status = tl_min_energy_law(n, m, PyArray_DATA(A), PyArray_DATA(B), horizon, sh.batch,
                               PyArray_DATA(x0), PyArray_DATA(xf), nt, tp, PyArray_DATA(u),
                               PyArray_DATA(x), &info, work);
    if (status == TL_OK)
        bad = nonfinite_outputs(2, (PyArrayObject *const[]){u, x});
    Py_END_ALLOW_THREADS
    if (status == TL_ERR_SINGULAR && !(info.growth <= TL_LAW_GROWTH_LIMIT))
        set_growth_error(info.growth, horizon, "min_energy_law", 1);
    else if (status != TL_OK)
        set_gramian_error(status, info.cond, "min_energy_law");
    if (status != TL_OK)
        goto done;
    if (warn_overflow(bad, "min_energy_law", 2, (const char *const[]){"u", "x"}) < 0)
        goto done;
    result = Py_BuildValue("(OO)", u, x);

done:
    PyMem_RawFree(work);
    Py_XDECREF(A), Py_XDECREF(B), Py_XDECREF(x0), Py_XDECREF(xf), Py_XDECREF(t);
    Py_XDECREF(u), Py_XDECREF(x);
    return result;
}

/* ---- module ------------------------------------------------------------ */

#define FASTCALL_KW(fn) (PyCFunction)(void (*)(void))(fn), METH_FASTCALL | METH_KEYWORDS

/* The XLA FFI handlers (xla_ffi.c) as capsules of their addresses. */
static PyObject *core_xla_ffi_targets(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    size_t count;
    const tlx_target *targets = tlx_targets(&count);
    PyObject *out = PyDict_New();
    for (size_t i = 0; out != NULL && i < count; i++) {
        PyObject *capsule = PyCapsule_New(targets[i].handler, NULL, NULL);
        if (capsule == NULL || PyDict_SetItemString(out, targets[i].name, capsule) < 0)
            Py_CLEAR(out);
        Py_XDECREF(capsule);
    }
    return out;
}

static PyMethodDef core_methods[] = {
    {"expm", core_expm, METH_VARARGS,
     "expm(A) -> E\n\nMatrix exponential of a square float64 matrix (balancing, then "
     "Al-Mohy and Higham's 2009 scaling and squaring; Ctrl-C interrupts it)."},
    {"discretize", (PyCFunction)(void (*)(void))core_discretize, METH_VARARGS | METH_KEYWORDS,
     "discretize(A, B, dt, method='zoh') -> (Ad, Bd)"},
    {"rollout", FASTCALL_KW(core_rollout),
     "rollout(system, x0, controls, *, check_finite=True) -> states"},
    {"rollout_vjp", FASTCALL_KW(core_rollout_vjp),
     "rollout_vjp(system, x0, controls, grad_states, *, check_finite=True)\n"
     "    -> (grad_controls, grad_x0)"},
    {"final_state_error", FASTCALL_KW(core_final_state_error),
     "final_state_error(system, controls, x0, xf, *, lengths=None, check_finite=True)\n"
     "    -> (B,) or 0-d"},
    {"time_weights", core_time_weights, METH_VARARGS,
     "time_weights(T, discount, lengths, mask) -> (B, T) or (T,) float64"},
    {"control_loss", FASTCALL_KW(core_control_loss),
     "control_loss(pred, target, *, discount=None, lengths=None, mask=None, penalty='mse',\n"
     "             delta=1.0, kernel='auto', feature_weights=None, check_finite=True,\n"
     "             want_grad=True) -> (value, grad), or value"},
    {"rollout_loss", FASTCALL_KW(core_rollout_loss),
     "rollout_loss(system, controls, x0, ref_controls=None, ref_states=None, target=None, *,\n"
     "             terms, control_weight=0.0, trajectory_weight=0.0, terminal_weight=0.0,\n"
     "             include_initial=False, discount=None, lengths=None, mask=None,\n"
     "             penalty='mse', delta=1.0, kernel='auto', feature_weights=None,\n"
     "             state_weights=None, check_finite=True, target_name='target')\n"
     "    -> (total, control, trajectory, terminal, grad_controls, grad_x0)"},
    {"combined_loss", FASTCALL_KW(core_combined_loss),
     "combined_loss(system, controls, x0, ref_controls, ref_states, terminal_target=None, *,\n"
     "              weight, terminal_weight=0.0, include_initial=False, discount=None,\n"
     "              lengths=None, mask=None, penalty='mse', delta=1.0, kernel='auto',\n"
     "              feature_weights=None, state_weights=None, check_finite=True)\n"
     "    -> LossResult(total, grad_controls, grad_x0, LossComponents(control, trajectory,\n"
     "       terminal, weight, terminal_weight, total)): all three terms, the control one\n"
     "       at weight 1"},
    {"set_system_type", core_set_system_type, METH_O,
     "set_system_type(cls)\n\n"
     "The tuple subclass of trajloss systems' _core (set by trajloss.systems): its arrays\n"
     "were checked when the system was made and are read without checking them again."},
    {"set_result_types", core_set_result_types, METH_VARARGS,
     "set_result_types(LossResult, LossComponents)\n\n"
     "The named tuples combined_loss returns (set by trajloss.losses)."},
    {"min_energy", core_min_energy, METH_VARARGS,
     "min_energy(system, A, B, dt, x0, xf, steps, method)\n"
     "    -> (controls, states, final_error, energy, cond)"},
    {"min_energy_law", core_min_energy_law, METH_VARARGS,
     "min_energy_law(A, B, horizon, x0, xf, t) -> (u, x)"},
    {"set_num_threads", core_set_num_threads, METH_O,
     "set_num_threads(k)\n\nWorker threads the losses use over the batch (1 .. 256)."},
    {"get_num_threads", core_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"xla_ffi_targets", core_xla_ffi_targets, METH_NOARGS,
     "xla_ffi_targets() -> dict\n\nThe XLA FFI handlers of trajloss.jax, name -> PyCapsule, for\n"
     "jax.ffi.register_ffi_target(name, capsule, platform='cpu')."},
    {NULL, NULL, 0, NULL},
};
#undef FASTCALL_KW

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
    if (LinAlgError == NULL || index_entries() < 0)
        return NULL;

#ifndef _WIN32
    static int atfork_registered = 0;
    if (!atfork_registered && pthread_atfork(NULL, NULL, forget_pool_in_child) == 0)
        atfork_registered = 1;
#endif
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "XLA_FFI_OPTIONS", TLX_OPTIONS) < 0 ||
        PyModule_AddIntConstant(module, "XLA_FFI_API_MINOR", TLX_API_MINOR) < 0 ||
        PyModule_AddStringConstant(module, "CORE_VERSION", TL_VERSION) < 0 ||
        PyModule_AddStringConstant(module, "LAPACK_PROVIDER", TL_LAPACK_PROVIDER) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DIM", TL_MAX_DIM) < 0 ||
        PyModule_AddIntConstant(module, "TERM_CONTROL", TL_TERM_CONTROL) < 0 ||
        PyModule_AddIntConstant(module, "TERM_TRAJECTORY", TL_TERM_TRAJECTORY) < 0 ||
        PyModule_AddIntConstant(module, "TERM_TERMINAL", TL_TERM_TERMINAL) < 0 ||
        PyModule_AddObject(module, "COND_LIMIT", PyFloat_FromDouble(TL_COND_LIMIT)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
