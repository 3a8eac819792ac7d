/* peftswift._native: pager and optimizers (included by _native.c). Handles travel as capsules
 * (wrap_pager / pager_arg, ..., _native.c). */

/* pager_create(budget_bytes, page_size, spill_dir|None) -> capsule */
static PyObject *m_pager_create(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"budget_bytes", "page_size", "spill_dir", NULL};
    long long budget, page;
    const char *dir = NULL;
    pst_pager *p = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLz", kwlist, &budget, &page, &dir)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_pager_create(budget, page, dir, &p);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return wrap_pager(p);
}

/* pager_set_budget(pager, budget_bytes): may spill pages, so the GIL is released */
static PyObject *m_pager_set_budget(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"pager", "budget_bytes", NULL};
    pst_pager *p;
    long long budget;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&L", kwlist, pager_arg, &p, &budget)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_pager_set_budget(p, budget);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* pager_stats(pager) -> dict: pst_pager_get_stats */
static PyObject *m_pager_stats(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"pager", NULL};
    pst_pager *p;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, pager_arg, &p)) return NULL;
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

/* paged_alloc(pager, bytes) -> capsule: may spill other pages to make room, so the GIL is released */
static PyObject *m_paged_alloc(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"pager", "bytes", NULL};
    pst_pager *p;
    long long bytes;
    pst_paged *b = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&L", kwlist, pager_arg, &p, &bytes)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_paged_alloc(p, bytes, &b);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return wrap_paged(b);
}

/* paged_acquire(buffer, offset, count, for_writing) -> address */
static PyObject *m_paged_acquire(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"buffer", "offset", "count", "for_writing", NULL};
    pst_paged *b;
    long long off, count;
    int w;
    void *ptr = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LLp", kwlist, paged_arg, &b, &off, &count, &w)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_paged_acquire(b, off, count, w, &ptr);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)ptr);
}

/* paged_release(buffer, offset, count): unpins (no I/O) */
static PyObject *m_paged_release(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"buffer", "offset", "count", NULL};
    pst_paged *b;
    long long off, count;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LL", kwlist, paged_arg, &b, &off, &count)) return NULL;
    pst_status st = pst_paged_release(b, off, count);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* paged_prefetch(buffer): starts a background read and returns at once */
static PyObject *m_paged_prefetch(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"buffer", NULL};
    pst_paged *b;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, paged_arg, &b)) return NULL;
    pst_status st = pst_paged_prefetch(b);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* An "O&" converter for an optional pager: None gives NULL. */
static int pager_or_none_arg(PyObject *obj, void *out) {
    if (obj == Py_None) { *(pst_pager **)out = NULL; return 1; }
    return pager_arg(obj, out);
}

/* adamw_create(lr, beta1, beta2, eps, weight_decay, state_format, min_8bit_size, pager|None):
 * the pst_adamw_params fields; no state exists before add_param, so no GIL release */
static PyObject *m_adamw_create(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"lr", "beta1", "beta2", "eps", "weight_decay", "state_format", "min_8bit_size", "pager", NULL};
    double lr, b1, b2, eps, wd;
    int fmt, min8;
    pst_pager *pg;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dddddiiO&", kwlist, &lr, &b1, &b2, &eps, &wd, &fmt, &min8,
                                     pager_or_none_arg, &pg)) return NULL;
    pst_adamw_params p;
    if (pst_adamw_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    p.lr = lr; p.beta1 = b1; p.beta2 = b2; p.eps = eps; p.weight_decay = wd; p.state_format = fmt; p.min_8bit_size = min8;
    pst_adamw *o = NULL;
    pst_status st = pst_adamw_create(&p, pg, &o);
    if (st != PST_OK) return raise_status(st);
    return wrap_adamw(o);
}

/* adamw_add_param(opt, param, grad) -> index: allocates the parameter's state (in the pager, if
 * any), so the GIL is released. The Python layer keeps both arrays alive. */
static PyObject *m_adamw_add_param(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", "param", "grad", NULL};
    pst_adamw *o;
    PyObject *op, *og;
    Py_buffer p = {0}, g = {0};
    PyObject *ret = NULL;
    int32_t idx = -1;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OO", kwlist, adamw_arg, &o, &op, &og)) return NULL;
    if (get_buffer(op, &p, 1, 4, "param") || get_buffer(og, &g, 1, 4, "grad")) goto done;
    if (p.len != g.len) { PyErr_Format(PyExc_ValueError, "param (%zd bytes) and grad (%zd bytes) differ in size", p.len, g.len); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_add_param(o, p.buf, g.buf, p.len / 4, &idx);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = PyLong_FromLong(idx);
done:
    release(&p); release(&g);
    return ret;
}

static PyObject *m_adamw_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", NULL};
    pst_adamw *o;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, adamw_arg, &o)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_step(o);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* adamw_zero_grad(opt): writes every registered gradient, so the GIL is released */
static PyObject *m_adamw_zero_grad(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", NULL};
    pst_adamw *o;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, adamw_arg, &o)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_zero_grad(o);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_adamw_clip_grad_norm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", "max_norm", NULL};
    pst_adamw *o;
    double mx;
    float norm = 0;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&d", kwlist, adamw_arg, &o, &mx)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_clip_grad_norm(o, mx, &norm);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return PyFloat_FromDouble(norm);
}

static PyObject *m_adamw_set_lr(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", "lr", NULL};
    pst_adamw *o;
    double lr;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&d", kwlist, adamw_arg, &o, &lr)) return NULL;
    pst_status st = pst_adamw_set_lr(o, lr);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* adamw_save_state(opt) -> bytes */
static PyObject *m_adamw_save_state(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", NULL};
    pst_adamw *o;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, adamw_arg, &o)) return NULL;
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

/* adamw_load_state(opt, buf): buf is the bytes adamw_save_state gave */
static PyObject *m_adamw_load_state(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"opt", "buf", NULL};
    pst_adamw *o;
    PyObject *ob;
    Py_buffer b = {0};
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O", kwlist, adamw_arg, &o, &ob)) return NULL;
    if (get_buffer(ob, &b, 0, 0, "buf")) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_adamw_load_state(o, b.buf, (ptrdiff_t)b.len);
    Py_END_ALLOW_THREADS
    release(&b);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lr_multiplier(kind, step, warmup, total_steps, cycles) -> float (kind: PST_LR_*) */
static PyObject *m_lr_multiplier(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"kind", "step", "warmup", "total_steps", "cycles", NULL};
    int kind;
    long long step, warm, total;
    double cycles;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLLLd", kwlist, &kind, &step, &warm, &total, &cycles)) return NULL;
    double out = 0;
    pst_status st = pst_lr_multiplier(kind, step, warm, total, cycles, &out);
    if (st != PST_OK) return raise_status(st);
    return PyFloat_FromDouble(out);
}

static PyMethodDef methods_optim[] = {
    KW_METHOD(pager_create, "budget_bytes, page_size, spill_dir", "pst_pager_create -> pager capsule."),
    KW_METHOD(pager_set_budget, "pager, budget_bytes", "pst_pager_set_budget."),
    KW_METHOD(pager_stats, "pager", "pst_pager_get_stats -> dict."),
    KW_METHOD(paged_alloc, "pager, bytes", "pst_paged_alloc -> paged capsule (borrows pager)."),
    KW_METHOD(paged_acquire, "buffer, offset, count, for_writing", "pst_paged_acquire -> address."),
    KW_METHOD(paged_release, "buffer, offset, count", "pst_paged_release."),
    KW_METHOD(paged_prefetch, "buffer", "pst_paged_prefetch."),
    KW_METHOD(adamw_create, "lr, beta1, beta2, eps, weight_decay, state_format, min_8bit_size, pager",
              "pst_adamw_create -> adamw capsule (state_format: PST_OPTIM_STATE_*; borrows pager)."),
    KW_METHOD(adamw_add_param, "opt, param, grad", "pst_adamw_add_param -> index (keeps pointers into both)."),
    KW_METHOD(adamw_step, "opt", "pst_adamw_step."),
    KW_METHOD(adamw_zero_grad, "opt", "pst_adamw_zero_grad."),
    KW_METHOD(adamw_clip_grad_norm, "opt, max_norm", "pst_adamw_clip_grad_norm -> total norm."),
    KW_METHOD(adamw_set_lr, "opt, lr", "pst_adamw_set_lr."),
    KW_METHOD(adamw_save_state, "opt", "pst_adamw_save_state -> bytes."),
    KW_METHOD(adamw_load_state, "opt, buf", "pst_adamw_load_state."),
    KW_METHOD(lr_multiplier, "kind, step, warmup, total_steps, cycles", "pst_lr_multiplier (kind: PST_LR_*)."),
    {NULL, NULL, 0, NULL},
};
