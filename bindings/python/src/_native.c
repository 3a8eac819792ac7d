/* peftswift._native: the thin CPython layer over libpeftswift.so.
 *
 * Every method has one shape (python-zstandard's C backend is the model; quant.inc.c shows
 * it): parse keywords (the kwlist spells the C function's parameters, or the fields of its
 * params struct; positional use works too), take handles through their "O&" converter and
 * buffers through the buffer protocol (C-contiguous, element size checked), release the GIL
 * around the native call whenever it can run long (compute, copies that scale with the data,
 * allocation and initialization of tensors, I/O; O(1) accessors keep it), one cleanup label,
 * and turn a failed status into a peftswift.Error subclass carrying .status and the library's
 * message. One C function per method: no opcode arguments. The header's integer constants are
 * module attributes under their C names. Classes, defaults and names live in the peftswift
 * package (Python), whose docstring lists which calls release the GIL. No numpy C API. */
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
    {PST_ERR_UNSUPPORTED_CPU, "UnsupportedCPUError", &PyExc_RuntimeError},
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

/* ---- handles
 *
 * Every engine handle travels to Python as a capsule named "peftswift.<kind>" whose destructor
 * calls pst_<kind>_free; only the destructor frees, so a handle Python can reach is never a
 * freed one. HANDLE_KINDS lists the kinds once; for each, DEFINE_HANDLE makes
 *   wrap_<kind>(h)           a new capsule owning h (h is freed if the capsule cannot be made)
 *   <kind>_arg(obj, &h)      an "O&" converter: the handle in a capsule of this kind, or a
 *                            TypeError naming the kind expected and the object given.
 * Lifetimes between handles (a layer borrows its quantized base, a trainer its model, a paged
 * buffer and a paged optimizer their pager) are kept by the Python objects holding them. */
#define HANDLE_KINDS(X) X(quant) X(lora) X(pager) X(paged) X(adamw) X(safetensors) X(llm) X(trainer)

static int handle_arg(PyObject *obj, const char *name, void **out) {
    if (PyCapsule_IsValid(obj, name)) {
        *out = PyCapsule_GetPointer(obj, name);
        return 1;
    }
    if (PyCapsule_CheckExact(obj)) {
        const char *got = PyCapsule_GetName(obj);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "expected a %s handle, got a %s handle", name, got ? got : "unnamed capsule");
    } else {
        PyErr_Format(PyExc_TypeError, "expected a %s handle, got %s", name, Py_TYPE(obj)->tp_name);
    }
    return 0;
}

#define DEFINE_HANDLE(kind)                                                                      \
    static void kind##_destructor(PyObject *cap) {                                               \
        pst_##kind##_free(PyCapsule_GetPointer(cap, "peftswift." #kind));                        \
    }                                                                                            \
    static inline PyObject *wrap_##kind(pst_##kind *h) {                                         \
        PyObject *cap = PyCapsule_New(h, "peftswift." #kind, kind##_destructor);                  \
        if (!cap) pst_##kind##_free(h);                                                          \
        return cap;                                                                              \
    }                                                                                            \
    static inline int kind##_arg(PyObject *obj, void *out) {                                     \
        return handle_arg(obj, "peftswift." #kind, (void **)out);                                \
    }
HANDLE_KINDS(DEFINE_HANDLE)
#undef DEFINE_HANDLE

/* ---- method tables
 *
 * KW_METHOD(name, "a, b", doc): m_<name> parses keywords (its kwlist spells the C parameters
 * "a", "b"); the text signature makes help() and inspect.signature show them. */
#define KW_METHOD(name, params, doc) \
    {#name, (PyCFunction)(void (*)(void))m_##name, METH_VARARGS | METH_KEYWORDS, #name "($module, /, " params ")\n--\n\n" doc}
#define NOARGS_METHOD(name, doc) {#name, m_##name, METH_NOARGS, #name "($module, /)\n--\n\n" doc}

/* ---- version, threads */

static PyObject *m_version(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyUnicode_FromString(pst_version_string());
}

static PyObject *m_abi_version(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_abi_version());
}

static PyObject *m_status_string(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"status", NULL};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i", kwlist, &st)) return NULL;
    return PyUnicode_FromString(pst_status_string(st));
}

static PyObject *m_set_num_threads(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n", NULL};
    int n;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i", kwlist, &n)) return NULL;
    pst_status st = pst_set_num_threads(n);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_get_num_threads());
}

static PyObject *m_set_isa(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"isa", NULL};
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i", kwlist, &isa)) return NULL;
    pst_status st = pst_set_isa(isa);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_get_isa(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_get_isa());
}

static PyObject *m_host_isa(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(pst_host_isa());
}

static PyMethodDef methods_core[] = {
    NOARGS_METHOD(version, "The library's version string: pst_version_string."),
    NOARGS_METHOD(abi_version, "The loaded library's ABI version: pst_abi_version."),
    KW_METHOD(status_string, "status", "The name of a status code: pst_status_string."),
    KW_METHOD(set_num_threads, "n", "Threads the kernels use: pst_set_num_threads."),
    NOARGS_METHOD(get_num_threads, "Threads the kernels use: pst_get_num_threads."),
    KW_METHOD(set_isa, "isa", "Kernel path (PST_ISA_*): pst_set_isa."),
    NOARGS_METHOD(get_isa, "Kernel path in use (PST_ISA_*): pst_get_isa."),
    NOARGS_METHOD(host_isa, "Best kernel path of this CPU (PST_ISA_*): pst_host_isa."),
    {NULL, NULL, 0, NULL},
};

/* ---- the header's integer constants, exported under their C names (PST_QUANT_NF4, ...) so
 * that the Python layer never types a number again. Tests/python checks this table against
 * every integer #define of include/peftswift.h. */
#define PST_CONSTANT(name) {#name, (long)(name)}
static const struct { const char *name; long value; } pst_constants[] = {
    PST_CONSTANT(PST_VERSION_MAJOR), PST_CONSTANT(PST_VERSION_MINOR), PST_CONSTANT(PST_VERSION_PATCH),
    PST_CONSTANT(PST_ABI_VERSION),
    PST_CONSTANT(PST_OK),
    PST_CONSTANT(PST_ERR_INVALID_ARG), PST_CONSTANT(PST_ERR_OUT_OF_MEMORY), PST_CONSTANT(PST_ERR_SHAPE),
    PST_CONSTANT(PST_ERR_UNSUPPORTED), PST_CONSTANT(PST_ERR_MISUSE), PST_CONSTANT(PST_ERR_IO),
    PST_CONSTANT(PST_ERR_CORRUPT), PST_CONSTANT(PST_ERR_NOT_FOUND), PST_CONSTANT(PST_ERR_EXISTS),
    PST_CONSTANT(PST_ERR_NONFINITE), PST_CONSTANT(PST_ERR_INTERNAL), PST_CONSTANT(PST_ERR_UNSUPPORTED_CPU),
    PST_CONSTANT(PST_ISA_AVX2), PST_CONSTANT(PST_ISA_AVX512), PST_CONSTANT(PST_ISA_AVX512_BF16),
    PST_CONSTANT(PST_DTYPE_F32), PST_CONSTANT(PST_DTYPE_F16), PST_CONSTANT(PST_DTYPE_BF16), PST_CONSTANT(PST_DTYPE_U8),
    PST_CONSTANT(PST_DTYPE_I8), PST_CONSTANT(PST_DTYPE_I32), PST_CONSTANT(PST_DTYPE_I64),
    PST_CONSTANT(PST_QUANT_NF4), PST_CONSTANT(PST_QUANT_FP4),
    PST_CONSTANT(PST_CODE_NF4), PST_CONSTANT(PST_CODE_FP4), PST_CONSTANT(PST_CODE_DYNAMIC_SIGNED),
    PST_CONSTANT(PST_CODE_DYNAMIC_UNSIGNED),
    PST_CONSTANT(PST_MAX_DIMS),
    PST_CONSTANT(PST_LORA_INIT_KAIMING), PST_CONSTANT(PST_LORA_INIT_GAUSSIAN), PST_CONSTANT(PST_LORA_INIT_ZEROS),
    PST_CONSTANT(PST_LORA_A), PST_CONSTANT(PST_LORA_B), PST_CONSTANT(PST_LORA_GRAD_A), PST_CONSTANT(PST_LORA_GRAD_B),
    PST_CONSTANT(PST_OPTIM_STATE_F32), PST_CONSTANT(PST_OPTIM_STATE_8BIT),
    PST_CONSTANT(PST_LR_CONSTANT), PST_CONSTANT(PST_LR_CONSTANT_WARMUP), PST_CONSTANT(PST_LR_LINEAR),
    PST_CONSTANT(PST_LR_COSINE),
    PST_CONSTANT(PST_SAFETENSORS_NO_METADATA),
    PST_CONSTANT(PST_PRETOK_AUTO), PST_CONSTANT(PST_PRETOK_GPT2), PST_CONSTANT(PST_PRETOK_DIGITS),
    PST_CONSTANT(PST_TOKENIZE_ADD_SPECIAL), PST_CONSTANT(PST_TOKENIZE_PARSE_SPECIAL),
    PST_CONSTANT(PST_DETOKENIZE_SKIP_SPECIAL),
    PST_CONSTANT(PST_DATA_TEXT), PST_CONSTANT(PST_DATA_JSONL),
    /* the first version's struct sizes (struct_size accepted from these up to sizeof) */
    PST_CONSTANT(PST_QUANT_STATE_V1_SIZE), PST_CONSTANT(PST_LORA_PARAMS_V1_SIZE),
    PST_CONSTANT(PST_ADAMW_PARAMS_V1_SIZE), PST_CONSTANT(PST_PAGER_STATS_V1_SIZE), PST_CONSTANT(PST_TENSOR_V1_SIZE),
    PST_CONSTANT(PST_LLM_LOAD_PARAMS_V1_SIZE), PST_CONSTANT(PST_LLM_INFO_V1_SIZE),
    PST_CONSTANT(PST_GENERATE_PARAMS_V1_SIZE), PST_CONSTANT(PST_TRAINER_PARAMS_V1_SIZE),
    PST_CONSTANT(PST_TRAIN_PROGRESS_V1_SIZE), PST_CONSTANT(PST_TRAINER_INFO_V1_SIZE),
    PST_CONSTANT(PST_LORA_APPLY_ARGS_V1_SIZE),
};
#undef PST_CONSTANT

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
    if (PyModule_AddFunctions(m, methods_core) != 0) goto fail;
    for (PyMethodDef **t = native_parts; *t; t++)
        if (PyModule_AddFunctions(m, *t) != 0) goto fail;
    for (size_t i = 0; i < sizeof pst_constants / sizeof pst_constants[0]; i++)
        if (PyModule_AddIntConstant(m, pst_constants[i].name, pst_constants[i].value) != 0) goto fail;
    if (PyModule_AddStringConstant(m, "PST_VERSION_STRING", PST_VERSION_STRING) != 0) goto fail;
    if (PyModule_AddIntConstant(m, "HEADER_ABI_VERSION", PST_ABI_VERSION) != 0) goto fail;
    if (PyModule_AddStringConstant(m, "HEADER_VERSION", PST_VERSION_STRING) != 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
