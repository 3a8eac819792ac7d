/* peftswift._native: safetensors, PEFT adapter directories, bitsandbytes checkpoints
 * (included by _native.c). Handles travel as capsules (wrap_safetensors / safetensors_arg,
 * _native.c). */

/* st_open(path) -> capsule */
static PyObject *m_st_open(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"path", NULL};
    const char *path;
    pst_safetensors *st = NULL;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s", kwlist, &path)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    s = pst_safetensors_open(path, &st);
    Py_END_ALLOW_THREADS
    if (s != PST_OK) return raise_status(s);
    return wrap_safetensors(st);
}

/* A str as a pst_string over its UTF-8 (NUL characters included; cached in the str object,
 * valid while it lives). A str that is not one (or has lone surrogates) raises. */
static int utf8_string(PyObject *o, pst_string *out, const char *what, Py_ssize_t index) {
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s %zd must be str, not %s", what, index, Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t len = 0;
    const char *p = PyUnicode_AsUTF8AndSize(o, &len);
    if (!p) return -1;
    out->data = p;
    out->length = (int64_t)len;
    return 0;
}

/* st_tensors(st) -> [(name, dtype, shape, address, byte_count)]: pst_safetensors_tensor_at_v2
 * (names with their lengths: a JSON "\u0000" inside a name comes through) */
static PyObject *m_st_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"st", NULL};
    pst_safetensors *st;
    PyObject *list = NULL, *ret = NULL;
    pst_status s;
    int64_t n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, safetensors_arg, &st)) return NULL;
    s = pst_safetensors_count(st, &n, NULL);
    if (s != PST_OK) { raise_status(s); goto done; }
    list = PyList_New((Py_ssize_t)n);
    if (!list) goto done;
    for (int64_t i = 0; i < n; i++) {
        pst_tensor t;
        pst_string name = {NULL, 0};
        memset(&t, 0, sizeof t);
        t.struct_size = sizeof t;
        s = pst_safetensors_tensor_at_v2(st, i, &t, &name);
        if (s != PST_OK) { raise_status(s); goto done; }
        PyObject *shape = PyTuple_New(t.ndim);
        if (!shape) goto done;
        for (int k = 0; k < t.ndim; k++) {
            PyObject *d = PyLong_FromLongLong(t.shape[k]);
            if (!d) { Py_DECREF(shape); goto done; }
            PyTuple_SET_ITEM(shape, k, d);
        }
        PyObject *item = Py_BuildValue("(s#sNKL)", name.data, (Py_ssize_t)name.length, t.dtype, shape,
                                       (unsigned long long)(uintptr_t)t.data, (long long)t.byte_count);
        if (!item) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    ret = Py_NewRef(list);
done:
    Py_XDECREF(list);
    return ret;
}

/* st_find(st, name) -> (name, dtype, shape, address, byte_count): pst_safetensors_find_v2 (the
 * name with its length, NUL characters included) */
static PyObject *m_st_find(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"st", "name", NULL};
    pst_safetensors *st;
    PyObject *oname, *shape = NULL, *ret = NULL;
    pst_string name = {NULL, 0};
    pst_tensor t;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&U", kwlist, safetensors_arg, &st, &oname)) return NULL;
    if (utf8_string(oname, &name, "tensor name", 0)) return NULL;
    memset(&t, 0, sizeof t);
    t.struct_size = sizeof t;
    s = pst_safetensors_find_v2(st, name.data, name.length, &t);
    if (s != PST_OK) { raise_status(s); goto done; }
    shape = PyTuple_New(t.ndim);
    if (!shape) goto done;
    for (int k = 0; k < t.ndim; k++) {
        PyObject *d = PyLong_FromLongLong(t.shape[k]);
        if (!d) goto done;
        PyTuple_SET_ITEM(shape, k, d);
    }
    ret = Py_BuildValue("(OsOKL)", oname, t.dtype, shape, (unsigned long long)(uintptr_t)t.data, (long long)t.byte_count);
done:
    Py_XDECREF(shape);
    return ret;
}

/* st_metadata(st) -> dict: pst_safetensors_metadata_at_v2 (keys and values with their lengths) */
static PyObject *m_st_metadata(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"st", NULL};
    pst_safetensors *st;
    PyObject *d = NULL, *ret = NULL;
    pst_status s;
    int64_t n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, safetensors_arg, &st)) return NULL;
    s = pst_safetensors_count(st, NULL, &n);
    if (s != PST_OK) { raise_status(s); goto done; }
    d = PyDict_New();
    if (!d) goto done;
    for (int64_t i = 0; i < n; i++) {
        pst_string k = {NULL, 0}, v = {NULL, 0};
        s = pst_safetensors_metadata_at_v2(st, i, &k, &v);
        if (s != PST_OK) { raise_status(s); goto done; }
        PyObject *kk = PyUnicode_DecodeUTF8(k.data, (Py_ssize_t)k.length, "strict");
        PyObject *vv = kk ? PyUnicode_DecodeUTF8(v.data, (Py_ssize_t)v.length, "strict") : NULL;
        int bad = !vv || PyDict_SetItem(d, kk, vv) != 0;
        Py_XDECREF(kk); Py_XDECREF(vv);
        if (bad) goto done;
    }
    ret = Py_NewRef(d);
done:
    Py_XDECREF(d);
    return ret;
}

/* st_write(path, tensors=[(name, dtype, shape, buffer)], metadata=dict|None):
 * pst_safetensors_write_v2 (None: no __metadata__; {}: an empty one, as safetensors) */
static PyObject *m_st_write(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"path", "tensors", "metadata", NULL};
    const char *path;
    PyObject *otensors, *ometa, *seq = NULL, *mitems = NULL, *ret = NULL;
    pst_tensor *ts = NULL;
    pst_string *names = NULL, *mk = NULL, *mv = NULL;
    Py_buffer *bufs = NULL;
    Py_ssize_t n = 0, nm = 0;
    int64_t meta_count = PST_SAFETENSORS_NO_METADATA;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOO", kwlist, &path, &otensors, &ometa)) return NULL;
    seq = PySequence_Tuple(otensors); /* ours: its items (and their names) live while the GIL is released */
    if (!seq) goto done;
    n = PyTuple_GET_SIZE(seq);
    ts = PyMem_Calloc(n ? (size_t)n : 1, sizeof(pst_tensor));
    names = PyMem_Calloc(n ? (size_t)n : 1, sizeof(pst_string));
    bufs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (!ts || !names || !bufs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyTuple_GET_ITEM(seq, i), *oname, *oshape, *obuf;
        const char *dtype;
        if (!PyArg_ParseTuple(it, "OsOO", &oname, &dtype, &oshape, &obuf)) goto done;
        if (utf8_string(oname, &names[i], "tensor name", i)) goto done;
        PyObject *sh = PySequence_Fast(oshape, "shape must be a sequence");
        if (!sh) goto done;
        Py_ssize_t nd = PySequence_Fast_GET_SIZE(sh);
        if (nd > PST_MAX_DIMS) {
            Py_DECREF(sh);
            PyErr_Format(PyExc_ValueError, "tensor %R has %zd dimensions, more than %d", oname, nd, PST_MAX_DIMS);
            goto done;
        }
        ts[i].struct_size = sizeof(pst_tensor);
        ts[i].name = NULL; /* names[i] carries it */
        ts[i].dtype = dtype;
        ts[i].ndim = (int32_t)nd;
        for (Py_ssize_t k = 0; k < nd; k++) ts[i].shape[k] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sh, k));
        Py_DECREF(sh);
        if (PyErr_Occurred()) goto done;
        if (get_buffer(obuf, &bufs[i], 0, 0, "tensor data")) goto done;
        ts[i].data = bufs[i].buf;
        ts[i].byte_count = bufs[i].len;
    }
    if (ometa != Py_None) {
        if (!PyDict_Check(ometa)) { PyErr_Format(PyExc_TypeError, "metadata must be a dict or None, not %s", Py_TYPE(ometa)->tp_name); goto done; }
        mitems = PyDict_Items(ometa); /* holds the keys and values while the GIL is released */
        if (!mitems) goto done;
        nm = PyList_GET_SIZE(mitems);
        mk = PyMem_Calloc(nm ? (size_t)nm : 1, sizeof(pst_string));
        mv = PyMem_Calloc(nm ? (size_t)nm : 1, sizeof(pst_string));
        if (!mk || !mv) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < nm; i++) {
            PyObject *kv = PyList_GET_ITEM(mitems, i);
            if (utf8_string(PyTuple_GET_ITEM(kv, 0), &mk[i], "metadata key", i) ||
                utf8_string(PyTuple_GET_ITEM(kv, 1), &mv[i], "metadata value", i)) goto done;
        }
        meta_count = (int64_t)nm;
    }
    Py_BEGIN_ALLOW_THREADS
    s = pst_safetensors_write_v2(path, ts, names, (int64_t)n, mk, mv, meta_count);
    Py_END_ALLOW_THREADS
    if (s != PST_OK) { raise_status(s); goto done; }
    ret = Py_NewRef(Py_None);
done:
    if (bufs) for (Py_ssize_t i = 0; i < n; i++) release(&bufs[i]);
    PyMem_Free(bufs); PyMem_Free(ts); PyMem_Free(names); PyMem_Free(mk); PyMem_Free(mv);
    Py_XDECREF(mitems);
    Py_XDECREF(seq);
    return ret;
}

/* Collects lora capsules and their module paths into C arrays (PyMem_Free both) that borrow
 * from *keep_layers and *keep_paths, tuples the caller releases after the native call. */
static int lora_arrays(PyObject *olayers, PyObject *opaths, PyObject **keep_layers, PyObject **keep_paths,
                       pst_lora ***layers, const char ***paths, Py_ssize_t *count) {
    PyObject *ls = owned_tuple(olayers, "layers must be a sequence");
    if (!ls) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(ls);
    if (names_array(opaths, keep_paths, paths, count)) { Py_DECREF(ls); return -1; }
    *layers = NULL;
    if (*count != n) { PyErr_SetString(PyExc_ValueError, "layers and module paths differ in length"); goto fail; }
    *layers = PyMem_Calloc(n ? (size_t)n : 1, sizeof(pst_lora *));
    if (!*layers) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!lora_arg(PyTuple_GET_ITEM(ls, i), &(*layers)[i])) goto fail;
    *keep_layers = ls;
    return 0;
fail:
    Py_DECREF(ls); Py_CLEAR(*keep_paths);
    PyMem_Free(*paths); PyMem_Free(*layers);
    return -1;
}

/* peft_save(directory, adapter_name, layers: [lora capsule], module_paths: [str], base_model_name_or_path|None) */
static PyObject *m_peft_save(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"directory", "adapter_name", "layers", "module_paths", "base_model_name_or_path", NULL};
    const char *dir, *name, *base = NULL;
    PyObject *ol, *op, *keep_layers = NULL, *keep_paths = NULL;
    pst_lora **layers = NULL;
    const char **paths = NULL;
    Py_ssize_t n = 0;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ssOOz", kwlist, &dir, &name, &ol, &op, &base)) return NULL;
    if (lora_arrays(ol, op, &keep_layers, &keep_paths, &layers, &paths, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    s = pst_peft_save(dir, name, layers, paths, (int32_t)n, base);
    Py_END_ALLOW_THREADS
    PyMem_Free(layers); PyMem_Free(paths);
    Py_DECREF(keep_layers); Py_DECREF(keep_paths);
    if (s != PST_OK) return raise_status(s);
    Py_RETURN_NONE;
}

/* peft_load(directory, layers: [lora capsule], module_paths: [str], as_name) */
static PyObject *m_peft_load(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"directory", "layers", "module_paths", "as_name", NULL};
    const char *dir, *name;
    PyObject *ol, *op, *keep_layers = NULL, *keep_paths = NULL;
    pst_lora **layers = NULL;
    const char **paths = NULL;
    Py_ssize_t n = 0;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOOs", kwlist, &dir, &ol, &op, &name)) return NULL;
    if (lora_arrays(ol, op, &keep_layers, &keep_paths, &layers, &paths, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    s = pst_peft_load(dir, layers, paths, (int32_t)n, name);
    Py_END_ALLOW_THREADS
    PyMem_Free(layers); PyMem_Free(paths);
    Py_DECREF(keep_layers); Py_DECREF(keep_paths);
    if (s != PST_OK) return raise_status(s);
    Py_RETURN_NONE;
}

/* bnb_save(path, weights: [quant capsule], biases: [buffer|None], modules: [str]) */
static PyObject *m_bnb_save(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"path", "weights", "biases", "modules", NULL};
    const char *path;
    PyObject *oq, *ob, *om, *qs = NULL, *bs = NULL, *keep_mods = NULL, *ret = NULL;
    const char **mods = NULL;
    pst_quant **ws = NULL;
    const float **biases = NULL;
    Py_buffer *bufs = NULL;
    Py_ssize_t n = 0, nm = 0;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOOO", kwlist, &path, &oq, &ob, &om)) return NULL;
    if (!(qs = owned_tuple(oq, "weights must be a sequence")) || !(bs = owned_tuple(ob, "biases must be a sequence"))) goto done;
    n = PyTuple_GET_SIZE(qs);
    ws = PyMem_Calloc(n ? (size_t)n : 1, sizeof(pst_quant *));
    biases = PyMem_Calloc(n ? (size_t)n : 1, sizeof(float *));
    bufs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (!ws || !biases || !bufs) { PyErr_NoMemory(); goto done; }
    if (PyTuple_GET_SIZE(bs) != n) { PyErr_SetString(PyExc_ValueError, "weights and biases differ in length"); goto done; }
    if (names_array(om, &keep_mods, &mods, &nm)) goto done;
    if (nm != n) { PyErr_SetString(PyExc_ValueError, "weights and modules differ in length"); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!quant_arg(PyTuple_GET_ITEM(qs, i), &ws[i])) goto done;
        PyObject *b = PyTuple_GET_ITEM(bs, i);
        if (b != Py_None) {
            if (get_buffer(b, &bufs[i], 0, 4, "bias")) goto done;
            pst_quant_state qst;
            memset(&qst, 0, sizeof qst);
            qst.struct_size = sizeof qst;
            if (pst_quant_get_state(ws[i], &qst) != PST_OK) { raise_status(PST_ERR_INVALID_ARG); goto done; }
            if (bufs[i].len / 4 != qst.shape[0]) { PyErr_Format(PyExc_ValueError, "bias %zd has %zd values, expected %lld", i, bufs[i].len / 4, (long long)qst.shape[0]); goto done; }
            biases[i] = bufs[i].buf;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    s = pst_bnb_save(path, ws, biases, mods, (int32_t)n);
    Py_END_ALLOW_THREADS
    if (s != PST_OK) { raise_status(s); goto done; }
    ret = Py_NewRef(Py_None);
done:
    if (bufs) for (Py_ssize_t i = 0; i < n; i++) release(&bufs[i]);
    PyMem_Free(bufs); PyMem_Free(ws); PyMem_Free(biases); PyMem_Free(mods);
    Py_XDECREF(qs); Py_XDECREF(bs); Py_XDECREF(keep_mods);
    return ret;
}

/* Copies n bytes at p into a new bytes object (NULL p: None). */
static PyObject *bytes_or_none(const void *p, Py_ssize_t n) {
    if (!p) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)p, n);
}

/* quant_state(q) -> dict with bytes copies of the state arrays and the scalars: pst_quant_get_state */
static PyObject *m_quant_state(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", NULL};
    pst_quant *q;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, quant_arg, &q)) return NULL;
    pst_quant_state s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    pst_status st = pst_quant_get_state(q, &s);
    if (st != PST_OK) return raise_status(st);
    PyObject *shape = PyTuple_New(s.ndim);
    if (!shape) return NULL;
    for (int k = 0; k < s.ndim; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLongLong(s.shape[k]));
    return Py_BuildValue("{sisisisNsNsNsNsisisdsNsN}",
                         "quant_type", s.quant_type, "dtype", s.dtype, "blocksize", s.blocksize, "shape", shape,
                         "packed", bytes_or_none(s.packed, (Py_ssize_t)s.packed_bytes),
                         "code", bytes_or_none(s.code, 64),
                         "absmax", bytes_or_none(s.absmax, (Py_ssize_t)(s.nested ? s.absmax_count : 4 * s.absmax_count)),
                         "nested", s.nested, "nested_blocksize", s.nested_blocksize, "offset", (double)s.offset,
                         "nested_absmax", bytes_or_none(s.nested_absmax, (Py_ssize_t)(4 * s.nested_absmax_count)),
                         "nested_code", bytes_or_none(s.nested_code, 256 * 4));
}

/* bnb_load(path, module) -> (quant capsule, bias bytes|None) */
static PyObject *m_bnb_load(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"path", "module", NULL};
    const char *path, *module;
    pst_quant *q = NULL;
    int32_t has_bias = 0;
    pst_status s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss", kwlist, &path, &module)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    s = pst_bnb_load(path, module, &q, NULL, 0, &has_bias);
    Py_END_ALLOW_THREADS
    if (s != PST_OK) return raise_status(s);
    PyObject *cap = wrap_quant(q);
    if (!cap) return NULL;
    PyObject *bias = Py_NewRef(Py_None);
    if (has_bias) {
        pst_quant_state qs;
        memset(&qs, 0, sizeof qs);
        qs.struct_size = sizeof qs;
        if (pst_quant_get_state(q, &qs) != PST_OK) { Py_DECREF(cap); Py_DECREF(bias); return raise_status(PST_ERR_INTERNAL); }
        Py_ssize_t nb = (Py_ssize_t)qs.shape[0];
        PyObject *b = PyBytes_FromStringAndSize(NULL, nb * 4);
        if (!b) { Py_DECREF(cap); Py_DECREF(bias); return NULL; }
        Py_BEGIN_ALLOW_THREADS
        s = pst_bnb_load(path, module, &q, (float *)PyBytes_AS_STRING(b), nb, NULL);
        Py_END_ALLOW_THREADS
        if (s != PST_OK) { Py_DECREF(b); Py_DECREF(cap); Py_DECREF(bias); return raise_status(s); }
        pst_quant_free(q); /* the second load's weight: the first one is in the capsule */
        Py_DECREF(bias);
        bias = b;
    }
    return Py_BuildValue("(NN)", cap, bias);
}

static PyMethodDef methods_files[] = {
    KW_METHOD(st_open, "path", "pst_safetensors_open -> safetensors capsule (the file stays mapped while it lives)."),
    KW_METHOD(st_tensors, "st", "pst_safetensors_tensor_at_v2 -> [(name, dtype, shape, address, byte_count)]."),
    KW_METHOD(st_find, "st, name", "pst_safetensors_find_v2 -> (name, dtype, shape, address, byte_count)."),
    KW_METHOD(st_metadata, "st", "pst_safetensors_metadata_at_v2 -> __metadata__ as a dict."),
    KW_METHOD(st_write, "path, tensors, metadata", "pst_safetensors_write_v2 (metadata None: no __metadata__)."),
    KW_METHOD(peft_save, "directory, adapter_name, layers, module_paths, base_model_name_or_path", "pst_peft_save."),
    KW_METHOD(peft_load, "directory, layers, module_paths, as_name", "pst_peft_load."),
    KW_METHOD(bnb_save, "path, weights, biases, modules", "pst_bnb_save."),
    KW_METHOD(bnb_load, "path, module", "pst_bnb_load -> (quant capsule, bias bytes|None)."),
    KW_METHOD(quant_state, "q", "pst_quant_get_state -> dict of copies."),
    {NULL, NULL, 0, NULL},
};
