/* peftswift._native: quantization (included by _native.c). */

/* quantize_4bit(x, dtype, n, blocksize, quant_type, packed, absmax) */
static PyObject *m_quantize_4bit(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "dtype", "n", "blocksize", "quant_type", "packed", "absmax", NULL};
    PyObject *ox, *op, *oa;
    int dtype, blocksize, qt;
    long long n;
    Py_buffer x = {0}, p = {0}, a = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiLiiOO", kwlist, &ox, &dtype, &n, &blocksize, &qt, &op, &oa)) return NULL;
    if (get_buffer(ox, &x, 0, 0, "x") || get_buffer(op, &p, 1, 1, "packed") || get_buffer(oa, &a, 1, 4, "absmax")) goto done;
    if (n < 0 || x.len < n * (dtype == PST_DTYPE_F32 ? 4 : 2)) {
        PyErr_Format(PyExc_ValueError, "x holds %zd bytes, fewer than n (%lld) elements of dtype %d", x.len, n, dtype);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    st = pst_4bit_quantize(x.buf, dtype, n, blocksize, qt, p.buf, (size_t)p.len, a.buf, (size_t)(a.len / 4));
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&x); release(&p); release(&a);
    return ret;
}

/* dequantize_4bit(packed, absmax, code, quant_type, n, blocksize, out, out_dtype) */
static PyObject *m_dequantize_4bit(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"packed", "absmax", "code", "quant_type", "n", "blocksize", "out", "out_dtype", NULL};
    PyObject *op, *oa, *oc, *oo;
    int qt, blocksize, odt;
    long long n;
    Py_buffer p = {0}, a = {0}, c = {0}, o = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOiLiOi", kwlist, &op, &oa, &oc, &qt, &n, &blocksize, &oo, &odt)) return NULL;
    if (get_buffer(op, &p, 0, 1, "packed") || get_buffer(oa, &a, 0, 4, "absmax") ||
        get_optional_buffer(oc, &c, 4, "code") || get_buffer(oo, &o, 1, 0, "out")) goto done;
    if (c.buf && c.len != 16 * 4) { PyErr_Format(PyExc_ValueError, "code must hold 16 float32 values, got %zd bytes", c.len); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_4bit_dequantize(p.buf, (size_t)p.len, a.buf, (size_t)(a.len / 4), c.buf, qt, n, blocksize, o.buf, odt, (size_t)o.len);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&p); release(&a); release(&c); release(&o);
    return ret;
}

/* quantize_8bit(x, n, blocksize, code, q, absmax) */
static PyObject *m_quantize_8bit(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "n", "blocksize", "code", "q", "absmax", NULL};
    PyObject *ox, *oc, *oq, *oa;
    int blocksize;
    long long n;
    Py_buffer x = {0}, c = {0}, q = {0}, a = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLiOOO", kwlist, &ox, &n, &blocksize, &oc, &oq, &oa)) return NULL;
    if (get_buffer(ox, &x, 0, 4, "x") || get_optional_buffer(oc, &c, 4, "code") ||
        get_buffer(oq, &q, 1, 1, "q") || get_buffer(oa, &a, 1, 4, "absmax")) goto done;
    if (c.buf && c.len != 256 * 4) { PyErr_Format(PyExc_ValueError, "code must hold 256 float32 values, got %zd bytes", c.len); goto done; }
    if (n < 0 || x.len < n * 4) { PyErr_Format(PyExc_ValueError, "x holds %zd bytes, fewer than n (%lld) float32", x.len, n); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_8bit_quantize(x.buf, n, blocksize, c.buf, q.buf, (size_t)q.len, a.buf, (size_t)(a.len / 4));
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&x); release(&c); release(&q); release(&a);
    return ret;
}

/* dequantize_8bit(q, n, absmax, code, blocksize, out) */
static PyObject *m_dequantize_8bit(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "n", "absmax", "code", "blocksize", "out", NULL};
    PyObject *oq, *oa, *oc, *oo;
    int blocksize;
    long long n;
    Py_buffer q = {0}, a = {0}, c = {0}, o = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLOOiO", kwlist, &oq, &n, &oa, &oc, &blocksize, &oo)) return NULL;
    if (get_buffer(oq, &q, 0, 1, "q") || get_buffer(oa, &a, 0, 4, "absmax") ||
        get_optional_buffer(oc, &c, 4, "code") || get_buffer(oo, &o, 1, 4, "out")) goto done;
    if (c.buf && c.len != 256 * 4) { PyErr_Format(PyExc_ValueError, "code must hold 256 float32 values, got %zd bytes", c.len); goto done; }
    if (n < 0 || q.len < n) { PyErr_Format(PyExc_ValueError, "q holds %zd bytes, fewer than n (%lld)", q.len, n); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_8bit_dequantize(q.buf, n, a.buf, (size_t)(a.len / 4), c.buf, blocksize, o.buf, (size_t)(o.len / 4));
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&q); release(&a); release(&c); release(&o);
    return ret;
}

/* double_quantize(absmax, nested_blocksize, q, nested_absmax) -> offset */
static PyObject *m_double_quantize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"absmax", "nested_blocksize", "q", "nested_absmax", NULL};
    PyObject *oa, *oq, *on;
    int nb;
    Py_buffer a = {0}, q = {0}, na = {0};
    PyObject *ret = NULL;
    pst_status st;
    float offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiOO", kwlist, &oa, &nb, &oq, &on)) return NULL;
    if (get_buffer(oa, &a, 0, 4, "absmax") || get_buffer(oq, &q, 1, 1, "q") || get_buffer(on, &na, 1, 4, "nested_absmax")) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = pst_absmax_double_quantize(a.buf, (int64_t)(a.len / 4), nb, q.buf, (size_t)q.len, na.buf, (size_t)(na.len / 4), &offset);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = PyFloat_FromDouble((double)offset);
done:
    release(&a); release(&q); release(&na);
    return ret;
}

/* codebook(which, out): a table copy, no GIL release */
static PyObject *m_codebook(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"which", "out", NULL};
    int which;
    PyObject *oo;
    Py_buffer o = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO", kwlist, &which, &oo)) return NULL;
    if (get_buffer(oo, &o, 1, 4, "out")) goto done;
    st = pst_codebook(which, o.buf, (size_t)(o.len / 4));
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&o);
    return ret;
}

static PyMethodDef methods_quant[] = {
    KW_METHOD(quantize_4bit, "x, dtype, n, blocksize, quant_type, packed, absmax", "pst_4bit_quantize."),
    KW_METHOD(dequantize_4bit, "packed, absmax, code, quant_type, n, blocksize, out, out_dtype", "pst_4bit_dequantize."),
    KW_METHOD(quantize_8bit, "x, n, blocksize, code, q, absmax", "pst_8bit_quantize."),
    KW_METHOD(dequantize_8bit, "q, n, absmax, code, blocksize, out", "pst_8bit_dequantize."),
    KW_METHOD(double_quantize, "absmax, nested_blocksize, q, nested_absmax", "pst_absmax_double_quantize -> offset."),
    KW_METHOD(codebook, "which, out", "pst_codebook (which: PST_CODE_*)."),
    {NULL, NULL, 0, NULL},
};
