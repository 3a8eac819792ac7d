/* peftswift._native: the LoRA layer (included by _native.c). Handles travel as capsules
 * (wrap_lora / lora_arg, _native.c). */

/* quant_from_state(packed, absmax, code, nested_absmax|None, nested_code|None, offset, shape, dtype,
 *                  quant_type, blocksize, nested_blocksize) -> capsule: the pst_quant_state fields */
static PyObject *m_quant_from_state(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"packed", "absmax", "code", "nested_absmax", "nested_code", "offset", "shape", "dtype",
                             "quant_type", "blocksize", "nested_blocksize", NULL};
    PyObject *op, *oa, *oc, *ona, *onc, *oshape;
    double offset;
    int dtype, qt, blocksize, nbs;
    Py_buffer p = {0}, a = {0}, c = {0}, na = {0}, nc = {0};
    PyObject *ret = NULL;
    pst_quant *q = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOdOiiii", kwlist, &op, &oa, &oc, &ona, &onc, &offset, &oshape, &dtype, &qt,
                                     &blocksize, &nbs)) return NULL;
    pst_quant_state s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    PyObject *seq = PySequence_Fast(oshape, "shape must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
    if (nd < 1 || nd > PST_MAX_DIMS) { Py_DECREF(seq); PyErr_Format(PyExc_ValueError, "shape must have 1...%d dimensions", PST_MAX_DIMS); return NULL; }
    s.ndim = (int32_t)nd;
    for (Py_ssize_t i = 0; i < nd; i++) s.shape[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (PyErr_Occurred()) return NULL;
    int nested = ona != Py_None;
    if (get_buffer(op, &p, 0, 1, "packed") || get_buffer(oa, &a, 0, nested ? 1 : 4, "absmax") || get_buffer(oc, &c, 0, 4, "code") ||
        get_optional_buffer(ona, &na, 4, "nested_absmax") || get_optional_buffer(onc, &nc, 4, "nested_code")) goto done;
    if (c.len != 16 * 4) { PyErr_Format(PyExc_ValueError, "code must hold 16 float32 values, got %zd bytes", c.len); goto done; }
    if (nested && (!nc.buf || nc.len != 256 * 4)) { PyErr_Format(PyExc_ValueError, "nested_code must hold 256 float32 values"); goto done; }
    s.quant_type = qt; s.dtype = dtype; s.blocksize = blocksize;
    s.packed = p.buf; s.packed_bytes = p.len; s.code = c.buf;
    s.absmax = a.buf; s.absmax_count = nested ? a.len : a.len / 4;
    s.nested = nested; s.nested_blocksize = nbs; s.offset = (float)offset;
    s.nested_absmax = na.buf; s.nested_absmax_count = na.len / 4; s.nested_code = nc.buf;
    Py_BEGIN_ALLOW_THREADS
    st = pst_quant_from_state(&s, &q);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = wrap_quant(q);
done:
    release(&p); release(&a); release(&c); release(&na); release(&nc);
    return ret;
}

/* lora_create_dense(weight, out_features, in_features, bias|None) -> capsule */
static PyObject *m_lora_create_dense(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"weight", "out_features", "in_features", "bias", NULL};
    PyObject *ow, *ob;
    long long of, inf;
    Py_buffer w = {0}, b = {0};
    PyObject *ret = NULL;
    pst_lora *l = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLO", kwlist, &ow, &of, &inf, &ob)) return NULL;
    if (get_buffer(ow, &w, 0, 4, "weight") || get_optional_buffer(ob, &b, 4, "bias")) goto done;
    if (b.buf && b.len / 4 != of) { PyErr_Format(PyExc_ValueError, "bias has %zd values, expected out_features (%lld)", b.len / 4, of); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_create_dense(w.buf, (size_t)(w.len / 4), of, inf, b.buf, &l);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = wrap_lora(l);
done:
    release(&w); release(&b);
    return ret;
}

/* lora_create_quantized(base: quant capsule, bias|None) -> capsule */
static PyObject *m_lora_create_quantized(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"base", "bias", NULL};
    PyObject *ob;
    Py_buffer b = {0};
    PyObject *ret = NULL;
    pst_quant *q;
    pst_lora *l = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O", kwlist, quant_arg, &q, &ob)) return NULL;
    if (get_optional_buffer(ob, &b, 4, "bias")) goto done;
    int64_t of = 0;
    pst_quant_state s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (pst_quant_get_state(q, &s) != PST_OK) { raise_status(PST_ERR_INVALID_ARG); goto done; }
    of = s.shape[0];
    if (b.buf && b.len / 4 != of) { PyErr_Format(PyExc_ValueError, "bias has %zd values, expected out_features (%lld)", b.len / 4, (long long)of); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_create_quantized(q, b.buf, &l);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = wrap_lora(l);
done:
    release(&b);
    return ret;
}

/* lora_add_adapter(layer, name, r, alpha, dropout, use_rslora, init, seed): the pst_lora_params
 * fields; allocates and initializes A and B, so the GIL is released */
static PyObject *m_lora_add_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "name", "r", "alpha", "dropout", "use_rslora", "init", "seed", NULL};
    pst_lora *l;
    const char *name;
    int r, rs, init;
    double alpha, dropout;
    unsigned long long seed;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&siddpiK", kwlist, lora_arg, &l, &name, &r, &alpha, &dropout, &rs, &init,
                                     &seed)) return NULL;
    pst_lora_params p;
    if (pst_lora_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    p.r = r; p.alpha = (float)alpha; p.dropout = (float)dropout; p.use_rslora = rs; p.init = init; p.seed = seed;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_add_adapter(l, name, &p);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *m_lora_delete_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "name", NULL};
    pst_lora *l;
    const char *name;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s", kwlist, lora_arg, &l, &name)) return NULL;
    pst_status st = pst_lora_delete_adapter(l, name);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* A sequence as a tuple the caller owns: its items stay alive while the GIL is released,
 * whatever other threads do to the sequence given. msg: the TypeError for a non-sequence. */
static PyObject *owned_tuple(PyObject *obj, const char *msg) {
    PyObject *seq = PySequence_Fast(obj, msg);
    if (!seq || PyTuple_CheckExact(seq)) return seq;
    PyObject *t = PySequence_Tuple(seq);
    Py_DECREF(seq);
    return t;
}

/* Converts a sequence of str to a C array of char* (PyMem_Free it) borrowed from *keep, a
 * tuple of the strings the caller releases after the native call. */
static int names_array(PyObject *obj, PyObject **keep, const char ***out, Py_ssize_t *count) {
    PyObject *seq = owned_tuple(obj, "names must be a sequence of str");
    if (!seq) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    const char **arr = PyMem_Calloc(n ? (size_t)n : 1, sizeof(char *));
    if (!arr) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        arr[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(seq, i));
        if (!arr[i]) { PyMem_Free(arr); Py_DECREF(seq); return -1; }
    }
    *keep = seq;
    *out = arr;
    *count = n;
    return 0;
}

/* lora_set_active(layer, names, weights|None) */
static PyObject *m_lora_set_active(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "names", "weights", NULL};
    pst_lora *l;
    PyObject *onames, *ow, *keep = NULL, *ret = NULL;
    const char **names = NULL;
    Py_ssize_t n = 0;
    float *w = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OO", kwlist, lora_arg, &l, &onames, &ow)) return NULL;
    if (names_array(onames, &keep, &names, &n)) return NULL;
    if (ow != Py_None) {
        PyObject *seq = PySequence_Fast(ow, "weights must be a sequence of floats");
        if (!seq) goto done;
        if (PySequence_Fast_GET_SIZE(seq) != n) { Py_DECREF(seq); PyErr_SetString(PyExc_ValueError, "weights and names differ in length"); goto done; }
        w = PyMem_Calloc(n ? (size_t)n : 1, sizeof(float));
        if (!w) { Py_DECREF(seq); PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < n; i++) w[i] = (float)PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        Py_DECREF(seq);
        if (PyErr_Occurred()) goto done;
    }
    pst_status st = pst_lora_set_active(l, names, w, (int32_t)n);
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    PyMem_Free(names);
    PyMem_Free(w);
    Py_XDECREF(keep);
    return ret;
}

static PyObject *m_lora_set_training(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "training", NULL};
    pst_lora *l;
    int on;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&p", kwlist, lora_arg, &l, &on)) return NULL;
    pst_status st = pst_lora_set_training(l, on);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_set_compute_dtype(layer, dtype): PST_DTYPE_F32 or PST_DTYPE_BF16 */
static PyObject *m_lora_set_compute_dtype(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "dtype", NULL};
    pst_lora *l;
    int dtype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&i", kwlist, lora_arg, &l, &dtype)) return NULL;
    pst_status st = pst_lora_set_compute_dtype(l, dtype);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_forward(layer, x, m, y) */
static PyObject *m_lora_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "x", "m", "y", NULL};
    pst_lora *l;
    PyObject *ox, *oy;
    long long m;
    Py_buffer x = {0}, y = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OLO", kwlist, lora_arg, &l, &ox, &m, &oy)) return NULL;
    if (get_buffer(ox, &x, 0, 4, "x") || get_buffer(oy, &y, 1, 4, "y")) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_forward(l, x.buf, (size_t)(x.len / 4), m, y.buf, (size_t)(y.len / 4));
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&x); release(&y);
    return ret;
}

/* lora_backward(layer, dy, m, dx|None, bias_grad) */
static PyObject *m_lora_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "dy", "m", "dx", "bias_grad", NULL};
    pst_lora *l;
    PyObject *ody, *odx;
    long long m;
    int bg;
    Py_buffer dy = {0}, dx = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OLOp", kwlist, lora_arg, &l, &ody, &m, &odx, &bg)) return NULL;
    if (get_buffer(ody, &dy, 0, 4, "dy")) goto done;
    if (odx != Py_None && get_buffer(odx, &dx, 1, 4, "dx")) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_backward(l, dy.buf, (size_t)(dy.len / 4), m, dx.buf, (size_t)(dx.len / 4), bg);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&dy); release(&dx);
    return ret;
}

/* lora_zero_grad(layer): writes every adapter gradient, so the GIL is released */
static PyObject *m_lora_zero_grad(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", NULL};
    pst_lora *l;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, lora_arg, &l)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_zero_grad(l);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_tensor(layer, name, which) -> (address, rows, cols): pst_lora_adapter_tensor (which:
 * PST_LORA_A, _B, _GRAD_A, _GRAD_B). The Python layer wraps the address in an array that keeps
 * the layer alive (deleted adapters stay allocated until the layer is freed). */
static PyObject *m_lora_tensor(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "name", "which", NULL};
    pst_lora *l;
    const char *name;
    int which;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&si", kwlist, lora_arg, &l, &name, &which)) return NULL;
    float *data = NULL;
    int64_t rows = 0, cols = 0;
    pst_status st = pst_lora_adapter_tensor(l, name, which, &data, &rows, &cols);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("(KLL)", (unsigned long long)(uintptr_t)data, (long long)rows, (long long)cols);
}

/* lora_bias(layer) -> (bias address or 0, grad address or 0) */
static PyObject *m_lora_bias(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", NULL};
    pst_lora *l;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, lora_arg, &l)) return NULL;
    float *b = NULL, *g = NULL;
    pst_status st = pst_lora_bias(l, &b, &g);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)b, (unsigned long long)(uintptr_t)g);
}

/* lora_adapter_info(layer, name) -> (r, alpha, dropout, use_rslora, scaling, active, weight, merged) */
static PyObject *m_lora_adapter_info(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "name", NULL};
    pst_lora *l;
    const char *name;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s", kwlist, lora_arg, &l, &name)) return NULL;
    pst_lora_params p;
    float scaling = 0, weight = 0;
    int32_t active = 0, merged = 0;
    if (pst_lora_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    pst_status st = pst_lora_adapter_info(l, name, &p, &scaling, &active, &weight, &merged);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("(iddNdNdN)", p.r, (double)p.alpha, (double)p.dropout, PyBool_FromLong(p.use_rslora),
                         (double)scaling, PyBool_FromLong(active), (double)weight, PyBool_FromLong(merged));
}

/* lora_merge(layer, names|None) -> (max_abs_error, rms_error) */
static PyObject *m_lora_merge(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "names", NULL};
    pst_lora *l;
    PyObject *onames, *keep = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O", kwlist, lora_arg, &l, &onames)) return NULL;
    const char **names = NULL;
    Py_ssize_t n = 0;
    if (onames != Py_None && names_array(onames, &keep, &names, &n)) return NULL;
    float mx = 0, rms = 0;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_merge(l, names, (int32_t)n, &mx, &rms);
    Py_END_ALLOW_THREADS
    PyMem_Free(names);
    Py_XDECREF(keep);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("(dd)", (double)mx, (double)rms);
}

static PyObject *m_lora_unmerge(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", NULL};
    pst_lora *l;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, lora_arg, &l)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_unmerge(l);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_base_weight(layer, out) */
static PyObject *m_lora_base_weight(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "out", NULL};
    pst_lora *l;
    PyObject *oo;
    Py_buffer o = {0};
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O", kwlist, lora_arg, &l, &oo)) return NULL;
    if (get_buffer(oo, &o, 1, 4, "out")) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_base_weight(l, o.buf, (size_t)(o.len / 4));
    Py_END_ALLOW_THREADS
    release(&o);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* ---- borrowed memory and the layer as a function (peftswift.torch)
 *
 * These take ADDRESSES (Python ints, 0 for NULL) of memory the caller owns — PyTorch tensors'
 * data_ptr() — rather than buffers, so that a tensor is used in place whatever its dtype
 * support in the buffer protocol. The Python layer (peftswift/torch.py) checks device, dtype,
 * contiguity and shapes before it calls, and keeps the tensors alive as long as the handle. */

static inline const void *addr(unsigned long long a) { return (const void *)(uintptr_t)a; }

/* quant_borrow_state(packed, packed_bytes, absmax, absmax_count, code, nested, nested_absmax,
 *                    nested_absmax_count, nested_code, offset, shape, dtype, quant_type,
 *                    blocksize, nested_blocksize) -> quant capsule over the caller's arrays */
static PyObject *m_quant_borrow_state(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"packed", "packed_bytes", "absmax", "absmax_count", "code", "nested", "nested_absmax",
                             "nested_absmax_count", "nested_code", "offset", "shape", "dtype", "quant_type", "blocksize",
                             "nested_blocksize", NULL};
    unsigned long long p, a, c, na, nc;
    long long pb, ac, nac;
    int nested, dtype, qt, bs, nbs;
    double offset;
    PyObject *oshape;
    pst_quant *q = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KLKLKpKLKdOiiii", kwlist, &p, &pb, &a, &ac, &c, &nested, &na, &nac, &nc,
                                     &offset, &oshape, &dtype, &qt, &bs, &nbs)) return NULL;
    pst_quant_state s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    PyObject *seq = PySequence_Fast(oshape, "shape must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
    if (nd < 1 || nd > PST_MAX_DIMS) { Py_DECREF(seq); PyErr_Format(PyExc_ValueError, "shape must have 1...%d dimensions", PST_MAX_DIMS); return NULL; }
    s.ndim = (int32_t)nd;
    for (Py_ssize_t i = 0; i < nd; i++) s.shape[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (PyErr_Occurred()) return NULL;
    s.quant_type = qt; s.dtype = dtype; s.blocksize = bs;
    s.packed = addr(p); s.packed_bytes = pb; s.code = addr(c);
    s.absmax = addr(a); s.absmax_count = ac;
    s.nested = nested; s.nested_blocksize = nbs; s.offset = (float)offset;
    s.nested_absmax = addr(na); s.nested_absmax_count = nac; s.nested_code = addr(nc);
    Py_BEGIN_ALLOW_THREADS
    st = pst_quant_borrow_state(&s, &q);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return wrap_quant(q);
}

/* lora_create_dense_borrowed(weight, weight_count, out_features, in_features) -> lora capsule */
static PyObject *m_lora_create_dense_borrowed(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"weight", "weight_count", "out_features", "in_features", NULL};
    unsigned long long w;
    long long wc, of, inf;
    pst_lora *l = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KLLL", kwlist, &w, &wc, &of, &inf)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_create_dense_borrowed(addr(w), wc, of, inf, &l);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return wrap_lora(l);
}

static pst_status apply_args(pst_lora_apply_args *a, long long m, unsigned long long x, unsigned long long xl,
                             unsigned long long la, unsigned long long lb, long long r, double scaling, unsigned long long bias) {
    pst_status st = pst_lora_apply_args_init(a);
    a->m = m; a->x = addr(x); a->x_lora = addr(xl); a->lora_a = addr(la); a->lora_b = addr(lb);
    a->r = r; a->scaling = (float)scaling; a->bias = addr(bias);
    return st;
}

/* lora_apply(layer, m, x, x_lora, lora_a, lora_b, r, scaling, bias, y, y_capacity, t) */
static PyObject *m_lora_apply(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "m", "x", "x_lora", "lora_a", "lora_b", "r", "scaling", "bias", "y", "y_capacity",
                             "t", NULL};
    pst_lora *l;
    long long m, r, yc;
    unsigned long long x, xl, la, lb, bias, y, t;
    double scaling;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LKKKKLdKKLK", kwlist, lora_arg, &l, &m, &x, &xl, &la, &lb, &r, &scaling,
                                     &bias, &y, &yc, &t)) return NULL;
    pst_lora_apply_args a;
    if (apply_args(&a, m, x, xl, la, lb, r, scaling, bias) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_apply(l, &a, (float *)(uintptr_t)y, yc, (float *)(uintptr_t)t);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_apply_backward(layer, m, x, x_lora, lora_a, lora_b, r, scaling, dy, dy_count, t, dx, dx_lora,
 *                     grad_a, grad_b, grad_bias) */
static PyObject *m_lora_apply_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "m", "x", "x_lora", "lora_a", "lora_b", "r", "scaling", "dy", "dy_count", "t",
                             "dx", "dx_lora", "grad_a", "grad_b", "grad_bias", NULL};
    pst_lora *l;
    long long m, r, dyc;
    unsigned long long x, xl, la, lb, dy, t, dx, dxl, ga, gb, gbias;
    double scaling;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LKKKKLdKLKKKKKK", kwlist, lora_arg, &l, &m, &x, &xl, &la, &lb, &r,
                                     &scaling, &dy, &dyc, &t, &dx, &dxl, &ga, &gb, &gbias)) return NULL;
    pst_lora_apply_args a;
    if (apply_args(&a, m, x, xl, la, lb, r, scaling, 0) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    Py_BEGIN_ALLOW_THREADS
    st = pst_lora_apply_backward(l, &a, addr(dy), dyc, addr(t), (float *)(uintptr_t)dx, (float *)(uintptr_t)dxl,
                                 (float *)(uintptr_t)ga, (float *)(uintptr_t)gb, (float *)(uintptr_t)gbias);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyMethodDef methods_lora[] = {
    KW_METHOD(quant_from_state, "packed, absmax, code, nested_absmax, nested_code, offset, shape, dtype, quant_type, "
              "blocksize, nested_blocksize", "pst_quant_from_state -> quant capsule."),
    KW_METHOD(lora_create_dense, "weight, out_features, in_features, bias", "pst_lora_create_dense -> lora capsule."),
    KW_METHOD(lora_create_quantized, "base, bias", "pst_lora_create_quantized -> lora capsule (borrows base)."),
    KW_METHOD(lora_add_adapter, "layer, name, r, alpha, dropout, use_rslora, init, seed", "pst_lora_add_adapter."),
    KW_METHOD(lora_delete_adapter, "layer, name", "pst_lora_delete_adapter."),
    KW_METHOD(lora_set_active, "layer, names, weights", "pst_lora_set_active."),
    KW_METHOD(lora_set_training, "layer, training", "pst_lora_set_training."),
    KW_METHOD(lora_set_compute_dtype, "layer, dtype", "pst_lora_set_compute_dtype."),
    KW_METHOD(lora_forward, "layer, x, m, y", "pst_lora_forward."),
    KW_METHOD(lora_backward, "layer, dy, m, dx, bias_grad", "pst_lora_backward."),
    KW_METHOD(lora_zero_grad, "layer", "pst_lora_zero_grad."),
    KW_METHOD(lora_tensor, "layer, name, which", "pst_lora_adapter_tensor -> (address, rows, cols)."),
    KW_METHOD(lora_bias, "layer", "pst_lora_bias -> (address, address)."),
    KW_METHOD(lora_adapter_info, "layer, name", "pst_lora_adapter_info -> tuple."),
    KW_METHOD(lora_merge, "layer, names", "pst_lora_merge -> (max_abs_error, rms_error)."),
    KW_METHOD(lora_unmerge, "layer", "pst_lora_unmerge."),
    KW_METHOD(lora_base_weight, "layer, out", "pst_lora_base_weight."),
    KW_METHOD(quant_borrow_state, "packed, packed_bytes, absmax, absmax_count, code, nested, nested_absmax, "
              "nested_absmax_count, nested_code, offset, shape, dtype, quant_type, blocksize, nested_blocksize",
              "pst_quant_borrow_state over caller-owned addresses -> quant capsule (the caller keeps the memory alive)."),
    KW_METHOD(lora_create_dense_borrowed, "weight, weight_count, out_features, in_features",
              "pst_lora_create_dense_borrowed over a caller-owned address -> lora capsule."),
    KW_METHOD(lora_apply, "layer, m, x, x_lora, lora_a, lora_b, r, scaling, bias, y, y_capacity, t",
              "pst_lora_apply on addresses (0 = NULL)."),
    KW_METHOD(lora_apply_backward, "layer, m, x, x_lora, lora_a, lora_b, r, scaling, dy, dy_count, t, dx, dx_lora, "
              "grad_a, grad_b, grad_bias", "pst_lora_apply_backward on addresses (0 = NULL)."),
    {NULL, NULL, 0, NULL},
};
