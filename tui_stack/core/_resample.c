/* The 1-D passes of core/shifting.py's Warp, compiled (the numpy forms there are the
 * reference and the fallback). Each output pixel is the weighted sum of `taps` source pixels,
 * summed in the numpy path's order (w0 s0, then + wk sk one tap after another, each product
 * rounded to float32: built with -ffp-contract=off, no fused multiply-add), so both paths give
 * the same float32 pixels; NaN (the mask) spreads as it does there.
 *
 * No numpy C-API: arrays come through the buffer protocol (float32 2-D with unit steps along
 * rows, int64 1-D start indices, float32 (taps, n) or (taps, 1) weights). The loops run
 * without the GIL (the combine resamples on two threads). Every index is checked first. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_TAPS 16

typedef struct {
    Py_buffer view;
    char *buf;
    Py_ssize_t rows, cols, rstride; /* rstride in elements */
    int held;
} Plane;

static const char *skip_order(const char *f) {
    while (f && (*f == '@' || *f == '=' || *f == '<')) f++;
    return f;
}

static int get_plane(PyObject *obj, Plane *p, int writable, const char *name) {
    p->held = 0;
    if (PyObject_GetBuffer(obj, &p->view, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) < 0) return -1;
    p->held = 1;
    const char *f = skip_order(p->view.format);
    if (p->view.ndim != 2 || p->view.itemsize != 4 || !f || strcmp(f, "f") != 0) {
        PyErr_Format(PyExc_ValueError, "%s: a 2-D float32 array is needed", name);
        return -1;
    }
    p->rows = p->view.shape[0];
    p->cols = p->view.shape[1];
    /* a length-1 axis may carry any stride (numpy's relaxed strides): not used */
    Py_ssize_t rs = p->rows > 1 ? p->view.strides[0] : 0;
    if ((p->cols > 1 && p->view.strides[1] != 4) || rs < 0 || rs % 4) {
        PyErr_Format(PyExc_ValueError, "%s: rows must be contiguous", name);
        return -1;
    }
    p->rstride = rs / 4;
    p->buf = p->view.buf;
    return 0;
}

static int get_start(PyObject *obj, Py_buffer *v, int64_t **out, Py_ssize_t *n) {
    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO | PyBUF_C_CONTIGUOUS) < 0) return -1;
    const char *f = skip_order(v->format);
    if (v->ndim != 1 || v->itemsize != 8 || !f || (strcmp(f, "q") != 0 && strcmp(f, "l") != 0)) {
        PyErr_SetString(PyExc_ValueError, "start: a 1-D int64 array is needed");
        PyBuffer_Release(v);
        return -1;
    }
    *out = v->buf;
    *n = v->shape[0];
    return 0;
}

static void release(Plane *p) {
    if (p->held) PyBuffer_Release(&p->view);
    p->held = 0;
}

/* d[j] = sum_k w_k[j * ws] * p_k[j * dir], j in [0, n): dir -1 walks the source backwards
 * (a mirrored axis), ws 0 takes one weight a tap for all j. Specialised on the tap count so
 * the compiler unrolls the taps and vectorises along j. */
static inline __attribute__((always_inline)) void
lin_t(float *restrict d, const float *const *p, const float *const *w, int ws, int dir, Py_ssize_t n, int taps)
{
    const float *q[MAX_TAPS];
    float c[MAX_TAPS];
    for (int k = 0; k < taps; k++) {
        q[k] = p[k];
        c[k] = w[k][0];
    }
    if (dir < 0) {
        for (Py_ssize_t j = 0; j < n; j++) {
            float a = (ws ? w[0][j] : c[0]) * q[0][-j];
            for (int k = 1; k < taps; k++) a += (ws ? w[k][j] : c[k]) * q[k][-j];
            d[j] = a;
        }
    } else if (ws) {
        for (Py_ssize_t j = 0; j < n; j++) {
            float a = w[0][j] * q[0][j];
            for (int k = 1; k < taps; k++) a += w[k][j] * q[k][j];
            d[j] = a;
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            float a = c[0] * q[0][j];
            for (int k = 1; k < taps; k++) a += c[k] * q[k][j];
            d[j] = a;
        }
    }
}

/* wider vectors where the CPU has them, chosen when the module loads (GCC on x86-64 with
 * glibc, whose ifunc picks the clone; the plain SSE2 form elsewhere) */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__GLIBC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void lin(float *d, const float *const *p, const float *const *w, int ws, int dir, Py_ssize_t n, int taps)
{
    switch (taps) {
    case 1: lin_t(d, p, w, ws, dir, n, 1); break;
    case 2: lin_t(d, p, w, ws, dir, n, 2); break;
    case 4: lin_t(d, p, w, ws, dir, n, 4); break;
    case 6: lin_t(d, p, w, ws, dir, n, 6); break;
    case 8: lin_t(d, p, w, ws, dir, n, 8); break;
    default: lin_t(d, p, w, ws, dir, n, taps);
    }
}

typedef struct {
    Plane src, dst, w;
    Py_buffer sv;
    int64_t *start;
    Py_ssize_t n;
    int taps, ws;
} Args;

static void free_args(Args *a) {
    release(&a->src);
    release(&a->dst);
    release(&a->w);
    if (a->start) PyBuffer_Release(&a->sv);
    a->start = NULL;
}

/* src, start, w, dst: the four arrays every pass takes; `n_w` the positions the weights
 * must cover (or 1 column: one weight a tap for all). */
static int parse(PyObject *args, Args *a, const char *name) {
    PyObject *src, *start, *w, *dst;
    memset(a, 0, sizeof(*a));
    if (!PyArg_ParseTuple(args, "OOOO", &src, &start, &w, &dst)) return -1;
    if (get_plane(src, &a->src, 0, "src") < 0 || get_plane(dst, &a->dst, 1, "dst") < 0 ||
        get_plane(w, &a->w, 0, "w") < 0)
        return -1;
    if (get_start(start, &a->sv, &a->start, &a->n) < 0) {
        a->start = NULL;
        return -1;
    }
    a->taps = (int)a->w.rows;
    a->ws = a->w.cols != 1;
    if (a->taps < 1 || a->taps > MAX_TAPS || (a->ws && a->w.cols != a->n)) {
        PyErr_Format(PyExc_ValueError, "%s: weights must be (taps <= %d, %zd or 1)", name, MAX_TAPS, a->n);
        return -1;
    }
    return 0;
}

/* every start[i] + [0, extent) within [0, size) */
static int in_bounds(const Args *a, Py_ssize_t extent, Py_ssize_t size, const char *name) {
    for (Py_ssize_t i = 0; i < a->n; i++)
        if (a->start[i] < 0 || a->start[i] + extent > size) {
            PyErr_Format(PyExc_IndexError, "%s: source index %lld outside [0, %zd)", name,
                         (long long)a->start[i] + (a->start[i] < 0 ? 0 : extent - 1), size);
            return -1;
        }
    return 0;
}

static PyObject *fail(Args *a) {
    free_args(a);
    return NULL;
}

#define W(a, k) ((const float *)(a)->w.buf + (k) * (a)->w.rstride)
#define ROW(pl, r) ((float *)(pl).buf + (r) * (pl).rstride)

static PyObject *along_x(PyObject *self, PyObject *args) {
    Args a;
    if (parse(args, &a, "along_x") < 0) return fail(&a);
    if (a.dst.cols != a.n || a.dst.rows != a.src.rows) {
        PyErr_SetString(PyExc_ValueError, "along_x: dst must be (src rows, len(start))");
        return fail(&a);
    }
    if (in_bounds(&a, a.taps, a.src.cols, "along_x") < 0) return fail(&a);
    Py_BEGIN_ALLOW_THREADS
    /* runs of columns whose taps start at consecutive source pixels, forwards or backwards */
    Py_ssize_t i = 0;
    while (i < a.n) {
        Py_ssize_t j = i + 1;
        int dir = 1;
        if (j < a.n && a.start[j] == a.start[i] - 1) dir = -1;
        while (j < a.n && a.start[j] == a.start[j - 1] + dir) j++;
        const float *w[MAX_TAPS];
        for (int k = 0; k < a.taps; k++) w[k] = W(&a, k) + (a.ws ? i : 0);
        for (Py_ssize_t r = 0; r < a.src.rows; r++) {
            const float *s = ROW(a.src, r) + a.start[i];
            const float *p[MAX_TAPS];
            for (int k = 0; k < a.taps; k++) p[k] = s + k;
            lin(ROW(a.dst, r) + i, p, w, a.ws, dir, j - i, a.taps);
        }
        i = j;
    }
    Py_END_ALLOW_THREADS
    free_args(&a);
    Py_RETURN_NONE;
}

static PyObject *along_y(PyObject *self, PyObject *args) {
    Args a;
    if (parse(args, &a, "along_y") < 0) return fail(&a);
    if (a.dst.rows != a.n || a.dst.cols != a.src.cols) {
        PyErr_SetString(PyExc_ValueError, "along_y: dst must be (len(start), src cols)");
        return fail(&a);
    }
    if (in_bounds(&a, a.taps, a.src.rows, "along_y") < 0) return fail(&a);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < a.n; i++) {
        const float *p[MAX_TAPS], *w[MAX_TAPS];
        for (int k = 0; k < a.taps; k++) {
            p[k] = ROW(a.src, a.start[i] + k);
            w[k] = W(&a, k) + (a.ws ? i : 0);
        }
        lin(ROW(a.dst, i), p, w, 0, 1, a.src.cols, a.taps);
    }
    Py_END_ALLOW_THREADS
    free_args(&a);
    Py_RETURN_NONE;
}

static PyObject *shear_rows(PyObject *self, PyObject *args) {
    /* dst[i, j] = sum_k w[k, i] src[i, start[i] + j + k] */
    Args a;
    if (parse(args, &a, "shear_rows") < 0) return fail(&a);
    if (a.dst.rows != a.n || a.src.rows != a.n) {
        PyErr_SetString(PyExc_ValueError, "shear_rows: src and dst must have len(start) rows");
        return fail(&a);
    }
    if (in_bounds(&a, a.dst.cols + a.taps - 1, a.src.cols, "shear_rows") < 0) return fail(&a);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < a.n; i++) {
        const float *p[MAX_TAPS], *w[MAX_TAPS];
        const float *s = ROW(a.src, i) + a.start[i];
        for (int k = 0; k < a.taps; k++) {
            p[k] = s + k;
            w[k] = W(&a, k) + (a.ws ? i : 0);
        }
        lin(ROW(a.dst, i), p, w, 0, 1, a.dst.cols, a.taps);
    }
    Py_END_ALLOW_THREADS
    free_args(&a);
    Py_RETURN_NONE;
}

static PyObject *shear_cols(PyObject *self, PyObject *args) {
    /* dst[i, j] = sum_k w[k, j] src[start[j] + i + k, j] */
    Args a;
    if (parse(args, &a, "shear_cols") < 0) return fail(&a);
    if (a.dst.cols != a.n || a.src.cols < a.n) {
        PyErr_SetString(PyExc_ValueError, "shear_cols: dst must have len(start) columns, src as many or more");
        return fail(&a);
    }
    if (in_bounds(&a, a.dst.rows + a.taps - 1, a.src.rows, "shear_cols") < 0) return fail(&a);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < a.dst.rows; r++) {
        Py_ssize_t i = 0;
        while (i < a.n) { /* runs of columns that start on the same source row */
            Py_ssize_t j = i + 1;
            while (j < a.n && a.start[j] == a.start[i]) j++;
            const float *p[MAX_TAPS], *w[MAX_TAPS];
            for (int k = 0; k < a.taps; k++) {
                p[k] = ROW(a.src, a.start[i] + r + k) + i;
                w[k] = W(&a, k) + (a.ws ? i : 0);
            }
            lin(ROW(a.dst, r) + i, p, w, a.ws, 1, j - i, a.taps);
            i = j;
        }
    }
    Py_END_ALLOW_THREADS
    free_args(&a);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"along_x", along_x, METH_VARARGS, "along_x(src, start, w, dst): dst[:, j] = sum_k w[k, j] src[:, start[j] + k]"},
    {"along_y", along_y, METH_VARARGS, "along_y(src, start, w, dst): dst[i] = sum_k w[k, i] src[start[i] + k]"},
    {"shear_rows", shear_rows, METH_VARARGS,
     "shear_rows(src, start, w, dst): dst[i, j] = sum_k w[k, i] src[i, start[i] + j + k]"},
    {"shear_cols", shear_cols, METH_VARARGS,
     "shear_cols(src, start, w, dst): dst[i, j] = sum_k w[k, j] src[start[j] + i + k, j]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", "Compiled resampling passes of core.shifting.", -1, methods};

PyMODINIT_FUNC PyInit__resample(void) { return PyModule_Create(&module); }
