/* peftswift._native: pager and optimizers (included by _native.c). */

static const char *PAGER_CAPSULE = "peftswift.pager";
static const char *PAGED_CAPSULE = "peftswift.paged";
static const char *ADAMW_CAPSULE = "peftswift.adamw";

static void pager_capsule_free(PyObject *c) { pst_pager_free(PyCapsule_GetPointer(c, PAGER_CAPSULE)); }
static void paged_capsule_free(PyObject *c) { pst_paged_free(PyCapsule_GetPointer(c, PAGED_CAPSULE)); }
static void adamw_capsule_free(PyObject *c) { pst_adamw_free(PyCapsule_GetPointer(c, ADAMW_CAPSULE)); }

/* pager_create(budget, page_size, spill_dir|None) -> capsule */
static PyObject *m_pager_create(PyObject *self, PyObject *args) {
    (void)self;
    long long budget, page;
    const char *dir = NULL;
    if (!PyArg_ParseTuple(args, "LLz", &budget, &page, &dir)) return NULL;
    pst_pager *p = NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_pager_create(budget, page, dir, &p);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    PyObject *cap = PyCapsule_New(p, PAGER_CAPSULE, pager_capsule_free);
    if (!cap) pst_pager_free(p);
    return cap;
}

static PyObject *m_pager_set_budget(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long budget;
    if (!PyArg_ParseTuple(args, "OL", &cap, &budget)) return NULL;
    pst_pager *p = PyCapsule_GetPointer(cap, PAGER_CAPSULE);
    if (!p) return NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_pager_set_budget(p, budget);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* pager_stats(cap) -> dict */
static PyObject *m_pager_stats(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    pst_pager *p = PyCapsule_GetPointer(cap, PAGER_CAPSULE);
    if (!p) return NULL;
    pst_pager_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    pst_status st = pst_pager_get_stats(p, &s);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsLsLsLsd}",
                         "budget_bytes", (long long)s.budget_bytes, "page_size", (long long)s.page_size,
                         "resident_bytes", (long long)s.resident_bytes, "peak_resident_bytes", (long long)s.peak_resident_bytes,
                         "pinned_bytes", (long long)s.pinned_bytes, "pages_spilled", (long long)s.pages_spilled,
                         "bytes_spilled", (long long)s.bytes_spilled, "pages_evicted", (long long)s.pages_evicted,
                         "pages_read_back", (long long)s.pages_read_back, "bytes_read_back", (long long)s.bytes_read_back,
                         "spill_file_bytes", (long long)s.spill_file_bytes, "io_seconds", s.io_seconds);
}

/* paged_alloc(pager cap, bytes) -> capsule */
static PyObject *m_paged_alloc(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long bytes;
    if (!PyArg_ParseTuple(args, "OL", &cap, &bytes)) return NULL;
    pst_pager *p = PyCapsule_GetPointer(cap, PAGER_CAPSULE);
    if (!p) return NULL;
    pst_paged *b = NULL;
    pst_status st = pst_paged_alloc(p, bytes, &b);
    if (st != PST_OK) return raise_status(st);
    PyObject *out = PyCapsule_New(b, PAGED_CAPSULE, paged_capsule_free);
    if (!out) pst_paged_free(b);
    return out;
}

/* paged_acquire(cap, offset, count, for_writing) -> address */
static PyObject *m_paged_acquire(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long off, count;
    int w;
    if (!PyArg_ParseTuple(args, "OLLp", &cap, &off, &count, &w)) return NULL;
    pst_paged *b = PyCapsule_GetPointer(cap, PAGED_CAPSULE);
    if (!b) return NULL;
    void *ptr = NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_paged_acquire(b, off, count, w, &ptr);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)ptr);
}

static PyObject *m_paged_release(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long off, count;
    if (!PyArg_ParseTuple(args, "OLL", &cap, &off, &count)) return NULL;
    pst_paged *b = PyCapsule_GetPointer(cap, PAGED_CAPSULE);
    if (!b) return NULL;
    pst_status st = pst_paged_release(b, off, count);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_paged_prefetch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    pst_paged *b = PyCapsule_GetPointer(cap, PAGED_CAPSULE);
    if (!b) return NULL;
    pst_status st = pst_paged_prefetch(b);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* adamw_create(lr, beta1, beta2, eps, weight_decay, state_format, min_8bit_size, pager|None) */
static PyObject *m_adamw_create(PyObject *self, PyObject *args) {
    (void)self;
    double lr, b1, b2, eps, wd;
    int fmt, min8;
    PyObject *opager;
    if (!PyArg_ParseTuple(args, "dddddiiO", &lr, &b1, &b2, &eps, &wd, &fmt, &min8, &opager)) return NULL;
    pst_pager *pg = NULL;
    if (opager != Py_None && !(pg = PyCapsule_GetPointer(opager, PAGER_CAPSULE))) return NULL;
    pst_adamw_params p;
    if (pst_adamw_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    p.lr = lr; p.beta1 = b1; p.beta2 = b2; p.eps = eps; p.weight_decay = wd; p.state_format = fmt; p.min_8bit_size = min8;
    pst_adamw *o = NULL;
    pst_status st = pst_adamw_create(&p, pg, &o);
    if (st != PST_OK) return raise_status(st);
    PyObject *cap = PyCapsule_New(o, ADAMW_CAPSULE, adamw_capsule_free);
    if (!cap) pst_adamw_free(o);
    return cap;
}

static pst_adamw *get_adamw(PyObject *cap) { return PyCapsule_GetPointer(cap, ADAMW_CAPSULE); }

/* adamw_add_param(cap, param, grad) -> index. The Python layer keeps both arrays alive. */
static PyObject *m_adamw_add_param(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *op, *og;
    if (!PyArg_ParseTuple(args, "OOO", &cap, &op, &og)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    Py_buffer p = {0}, g = {0};
    PyObject *ret = NULL;
    if (get_buffer(op, &p, 1, 4, "param") || get_buffer(og, &g, 1, 4, "grad")) goto done;
    if (p.len != g.len) { PyErr_Format(PyExc_ValueError, "param (%zd bytes) and grad (%zd bytes) differ in size", p.len, g.len); goto done; }
    int32_t idx = -1;
    pst_status st = pst_adamw_add_param(o, p.buf, g.buf, p.len / 4, &idx);
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = PyLong_FromLong(idx);
done:
    release(&p); release(&g);
    return ret;
}

static PyObject *m_adamw_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_step(o);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_adamw_zero_grad(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    pst_status st = pst_adamw_zero_grad(o);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_adamw_clip_grad_norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    double mx;
    if (!PyArg_ParseTuple(args, "Od", &cap, &mx)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    float norm = 0;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_clip_grad_norm(o, mx, &norm);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return PyFloat_FromDouble(norm);
}

static PyObject *m_adamw_set_lr(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    double lr;
    if (!PyArg_ParseTuple(args, "Od", &cap, &lr)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    pst_status st = pst_adamw_set_lr(o, lr);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* adamw_save_state(cap) -> bytes */
static PyObject *m_adamw_save_state(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    int64_t size = 0, written = 0;
    pst_status st = pst_adamw_state_size(o, &size);
    if (st != PST_OK) return raise_status(st);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!b) return NULL;
    char *buf = PyBytes_AS_STRING(b);
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_save_state(o, buf, (ptrdiff_t)size, &written);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { Py_DECREF(b); return raise_status(st); }
    if (written != size && _PyBytes_Resize(&b, (Py_ssize_t)written) != 0) return NULL;
    return b;
}

static PyObject *m_adamw_load_state(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *ob;
    if (!PyArg_ParseTuple(args, "OO", &cap, &ob)) return NULL;
    pst_adamw *o = get_adamw(cap);
    if (!o) return NULL;
    Py_buffer b = {0};
    if (get_buffer(ob, &b, 0, 0, "state")) return NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_load_state(o, b.buf, (ptrdiff_t)b.len);
    Py_END_ALLOW_THREADS
    release(&b);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_lr_multiplier(PyObject *self, PyObject *args) {
    (void)self;
    int kind;
    long long step, warm, total;
    double cycles;
    if (!PyArg_ParseTuple(args, "iLLLd", &kind, &step, &warm, &total, &cycles)) return NULL;
    double out = 0;
    pst_status st = pst_lr_multiplier(kind, step, warm, total, cycles, &out);
    if (st != PST_OK) return raise_status(st);
    return PyFloat_FromDouble(out);
}

static PyMethodDef methods_optim[] = {
    {"pager_create", m_pager_create, METH_VARARGS, "pst_pager_create -> capsule"},
    {"pager_set_budget", m_pager_set_budget, METH_VARARGS, "pst_pager_set_budget"},
    {"pager_stats", m_pager_stats, METH_VARARGS, "pst_pager_get_stats -> dict"},
    {"paged_alloc", m_paged_alloc, METH_VARARGS, "pst_paged_alloc -> capsule"},
    {"paged_acquire", m_paged_acquire, METH_VARARGS, "pst_paged_acquire -> address"},
    {"paged_release", m_paged_release, METH_VARARGS, "pst_paged_release"},
    {"paged_prefetch", m_paged_prefetch, METH_VARARGS, "pst_paged_prefetch"},
    {"adamw_create", m_adamw_create, METH_VARARGS, "pst_adamw_create -> capsule"},
    {"adamw_add_param", m_adamw_add_param, METH_VARARGS, "pst_adamw_add_param -> index"},
    {"adamw_step", m_adamw_step, METH_VARARGS, "pst_adamw_step"},
    {"adamw_zero_grad", m_adamw_zero_grad, METH_VARARGS, "pst_adamw_zero_grad"},
    {"adamw_clip_grad_norm", m_adamw_clip_grad_norm, METH_VARARGS, "pst_adamw_clip_grad_norm -> norm"},
    {"adamw_set_lr", m_adamw_set_lr, METH_VARARGS, "pst_adamw_set_lr"},
    {"adamw_save_state", m_adamw_save_state, METH_VARARGS, "pst_adamw_save_state -> bytes"},
    {"adamw_load_state", m_adamw_load_state, METH_VARARGS, "pst_adamw_load_state"},
    {"lr_multiplier", m_lr_multiplier, METH_VARARGS, "pst_lr_multiplier"},
    {NULL, NULL, 0, NULL},
};
