/* peftswift._native: the thin CPython layer over libpeftswift.so.
 *
 * Every method has one shape (python-zstandard's C backend is the model): parse keywords,
 * take buffers through the buffer protocol (C-contiguous, element size checked), release the
 * GIL around the native call, one cleanup label, and turn a failed status into a
 * peftswift.Error subclass carrying .status and the library's message. Classes, defaults and
 * dtype handling live in the peftswift package (Python). No numpy C API. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <peftswift.h>

/* ---- errors */

static PyObject *Error;                 /* peftswift.Error(Exception) */
static PyObject *status_errors[16];     /* status code -> subclass */

static const struct { int status; const char *name; PyObject **extra_base; } error_table[] = {
    {PST_ERR_INVALID_ARG, "InvalidArgumentError", &PyExc_ValueError},
    {PST_ERR_OUT_OF_MEMORY, "OutOfMemoryError", &PyExc_MemoryError},
    {PST_ERR_SHAPE, "ShapeError", &PyExc_ValueError},
    {PST_ERR_UNSUPPORTED, "UnsupportedError", &PyExc_NotImplementedError},
    {PST_ERR_MISUSE, "MisuseError", &PyExc_RuntimeError},
    {PST_ERR_IO, "IOError", &PyExc_OSError},
    {PST_ERR_CORRUPT, "CorruptDataError", &PyExc_ValueError},
    {PST_ERR_NOT_FOUND, "NotFoundError", &PyExc_KeyError},
    {PST_ERR_EXISTS, "ExistsError", &PyExc_ValueError},
    {PST_ERR_NONFINITE, "NonFiniteError", &PyExc_ValueError},
    {PST_ERR_INTERNAL, "InternalError", &PyExc_RuntimeError},
};

/* Raises the error for a failed status with the thread's last error message. */
static PyObject *raise_status(pst_status st) {
    const char *msg = pst_last_error();
    PyObject *cls = (st > 0 && st < 16 && status_errors[st]) ? status_errors[st] : Error;
    PyObject *args = Py_BuildValue("(s)", (msg && msg[0]) ? msg : pst_status_string(st));
    if (!args) return NULL;
    PyObject *exc = PyObject_Call(cls, args, NULL);
    Py_DECREF(args);
    if (!exc) return NULL;
    PyObject *code = PyLong_FromLong(st);
    if (code) {
        PyObject_SetAttrString(exc, "status", code);
        Py_DECREF(code);
    }
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return NULL;
}

/* ---- buffers */

static int native_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* A struct-module format with an explicit byte order other than this machine's ('>f' from a
 * numpy '>f4' array): its elements would be read byte-swapped, so get_buffer refuses it. */
static int nonnative_order(const char *format) {
    char c = format[0];
    return native_little_endian() ? (c == '>' || c == '!') : c == '<';
}

/* Takes a C-contiguous buffer in native byte order whose elements are `itemsize` bytes (0: any). */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *arg) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer (numpy array, bytes, ...), got %s",
                     arg, writable ? " writable" : "", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (view->format && nonnative_order(view->format)) {
        PyErr_Format(PyExc_TypeError, "%s must be in native (%s-endian) byte order, got format '%s'; "
                     "convert it first, e.g. a.astype(a.dtype.newbyteorder('='))",
                     arg, native_little_endian() ? "little" : "big", view->format);
        PyBuffer_Release(view);
        return -1;
    }
    if (itemsize && view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must have %zd-byte elements, got %zd-byte elements (format '%s')",
                     arg, itemsize, view->itemsize, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Optional buffer: None leaves view->buf NULL. */
static int get_optional_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, const char *arg) {
    memset(view, 0, sizeof *view);
    if (obj == NULL || obj == Py_None) return 0;
    return get_buffer(obj, view, 0, itemsize, arg);
}

static void release(Py_buffer *v) { if (v->obj) PyBuffer_Release(v); }

/* ---- version, threads, codebooks */

static PyObject *m_version(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyUnicode_FromString(pst_version_string());
}

static PyObject *m_abi_version(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_abi_version());
}

static PyObject *m_status_string(PyObject *self, PyObject *args) {
    (void)self;
    int st;
    if (!PyArg_ParseTuple(args, "i", &st)) return NULL;
    return PyUnicode_FromString(pst_status_string(st));
}

static PyObject *m_set_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    pst_status st = pst_set_num_threads(n);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_get_num_threads());
}

static PyMethodDef methods_core[] = {
    {"version", m_version, METH_NOARGS, "The library's version string."},
    {"abi_version", m_abi_version, METH_NOARGS, "The loaded library's ABI version."},
    {"status_string", m_status_string, METH_VARARGS, "status_string(code) -> name of a status code."},
    {"set_num_threads", m_set_num_threads, METH_VARARGS, "set_num_threads(n): threads used by the kernels."},
    {"get_num_threads", m_get_num_threads, METH_NOARGS, "get_num_threads() -> int."},
    {NULL, NULL, 0, NULL},
};

/* One file per feature, each defining a static method table, compiled as one unit. */
#include "quant.inc.c"
#include "lora.inc.c"
#include "optim.inc.c"
#include "files.inc.c"
#include "llm.inc.c"

static PyMethodDef *native_parts[] = {methods_quant, methods_lora, methods_optim, methods_files, methods_llm, NULL};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "peftswift._native",
    "Thin C layer over libpeftswift.so; use the peftswift package instead.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

static int add_methods(PyObject *m, PyMethodDef *defs) {
    for (PyMethodDef *d = defs; d->ml_name; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, PyModule_GetNameObject(m));
        if (!f || PyModule_AddObject(m, d->ml_name, f) != 0) { Py_XDECREF(f); return -1; }
    }
    return 0;
}

PyMODINIT_FUNC PyInit__native(void) {
    /* First of all: a CPU without x86-64-v3 (AVX2, FMA, ...) cannot run the engine; every pst_
     * call would answer PST_ERR_UNSUPPORTED_CPU, so say it at import, naming what is missing. */
    if (pst_cpu_check() != PST_OK) {
        PyErr_Format(PyExc_ImportError, "peftswift cannot run on this CPU: %s", pst_last_error());
        return NULL;
    }
    /* sqlite's rule: the header we were built with and the library we loaded must agree. */
    if (pst_abi_version() != PST_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "peftswift: the loaded libpeftswift.so has ABI version %d but this extension was "
                     "built for ABI version %d (library %s, header %s); reinstall the package",
                     (int)pst_abi_version(), PST_ABI_VERSION, pst_version_string(), PST_VERSION_STRING);
        return NULL;
    }
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Error = PyErr_NewExceptionWithDoc("peftswift.Error",
        "Base class of peftswift's errors; .status is the C status code (PST_ERR_*).", NULL, NULL);
    if (!Error || PyModule_AddObjectRef(m, "Error", Error) != 0) goto fail;
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; i++) {
        char qual[96];
        snprintf(qual, sizeof qual, "peftswift.%s", error_table[i].name);
        PyObject *bases = PyTuple_Pack(2, Error, *error_table[i].extra_base);
        if (!bases) goto fail;
        PyObject *cls = PyErr_NewException(qual, bases, NULL);
        Py_DECREF(bases);
        if (!cls) goto fail;
        status_errors[error_table[i].status] = cls;
        if (PyModule_AddObjectRef(m, error_table[i].name, cls) != 0) goto fail;
    }
    if (add_methods(m, methods_core) != 0) goto fail;
    for (PyMethodDef **t = native_parts; *t; t++)
        if (add_methods(m, *t) != 0) goto fail;
    if (PyModule_AddIntConstant(m, "HEADER_ABI_VERSION", PST_ABI_VERSION) != 0) goto fail;
    if (PyModule_AddStringConstant(m, "HEADER_VERSION", PST_VERSION_STRING) != 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
