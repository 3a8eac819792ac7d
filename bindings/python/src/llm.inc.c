/* peftswift._native: language models and fine-tuning (included by _native.c). Handles travel
 * as capsules (wrap_llm / llm_arg, wrap_trainer / trainer_arg, _native.c); long calls release
 * the GIL, callbacks retake it (PyGILState_Ensure) for as long as they run. */

/* A Python list of ints from n int32 ids. */
static PyObject *ids_to_list(const int32_t *ids, int64_t n) {
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l) return NULL;
    for (int64_t i = 0; i < n; i++) PyList_SET_ITEM(l, (Py_ssize_t)i, PyLong_FromLong(ids[i]));
    return l;
}

/* llm_load(path, quantize, quant_type, blocksize, double_quant, pretokenizer, compute_dtype) -> capsule:
 * the pst_llm_load_params fields */
static PyObject *m_llm_load(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"path", "quantize", "quant_type", "blocksize", "double_quant", "pretokenizer",
                             "compute_dtype", NULL};
    const char *path;
    int quantize, qt, bs, dq, pre, cd = PST_DTYPE_F32;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "siiiii|i", kwlist, &path, &quantize, &qt, &bs, &dq, &pre, &cd))
        return NULL;
    pst_llm_load_params p;
    if (pst_llm_load_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    p.quantize = quantize; p.quant_type = qt; p.blocksize = bs; p.double_quant = dq; p.pretokenizer = pre;
    p.compute_dtype = cd;
    pst_llm *m = NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_load(path, &p, &m);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return wrap_llm(m);
}

/* llm_set_compute_dtype(llm, dtype): PST_DTYPE_F32 or PST_DTYPE_BF16 */
static PyObject *m_llm_set_compute_dtype(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "dtype", NULL};
    pst_llm *m;
    int dtype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&i", kwlist, llm_arg, &m, &dtype)) return NULL;
    pst_status st = pst_llm_set_compute_dtype(m, dtype);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_info(llm) -> dict: pst_llm_get_info */
static PyObject *m_llm_info(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", NULL};
    pst_llm *m;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, llm_arg, &m)) return NULL;
    pst_llm_info i;
    memset(&i, 0, sizeof i);
    i.struct_size = sizeof i;
    pst_status st = pst_llm_get_info(m, &i);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("{si,si,si,si,si,si,si,si,sO,sO,si,si,sO,si,sd,sd,sL,sL}",
                         "layers", i.layers, "hidden", i.hidden, "intermediate", i.intermediate, "heads", i.heads,
                         "kv_heads", i.kv_heads, "head_dim", i.head_dim, "vocab", i.vocab, "max_positions", i.max_positions,
                         "tied_embeddings", i.tied_embeddings ? Py_True : Py_False, "quantized", i.quantized ? Py_True : Py_False,
                         "bos_id", i.bos_id, "eos_id", i.eos_id, "has_tokenizer", i.has_tokenizer ? Py_True : Py_False,
                         "adapter_count", i.adapter_count, "rms_eps", (double)i.rms_eps, "rope_theta", (double)i.rope_theta,
                         "parameter_count", (long long)i.parameter_count, "base_bytes", (long long)i.base_bytes);
}

/* llm_tokenize(llm, text: str, flags) -> list[int] (flags: PST_TOKENIZE_*) */
static PyObject *m_llm_tokenize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "text", "flags", NULL};
    pst_llm *m;
    const char *text;
    Py_ssize_t len;
    int flags;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s#i", kwlist, llm_arg, &m, &text, &len, &flags)) return NULL;
    int64_t n = 0;
    size_t cap_ids = (size_t)len + 16;
    int32_t *ids = PyMem_Malloc(cap_ids * sizeof *ids);
    if (!ids) return PyErr_NoMemory();
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_tokenize(m, text, (size_t)len, flags, ids, cap_ids, &n);
    Py_END_ALLOW_THREADS
    PyObject *ret = st == PST_OK ? ids_to_list(ids, n) : raise_status(st);
    PyMem_Free(ids);
    return ret;
}

/* llm_chat_prompt(llm, user, system|None) -> list[int]: tokenizes, so the GIL is released */
static PyObject *m_llm_chat_prompt(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "user", "system", NULL};
    pst_llm *m;
    const char *user, *system = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&sz", kwlist, llm_arg, &m, &user, &system)) return NULL;
    int64_t n = 0;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_chat_prompt(m, user, system, NULL, 0, &n);
    Py_END_ALLOW_THREADS
    if (st != PST_OK && st != PST_ERR_INVALID_ARG) return raise_status(st);
    if (st == PST_ERR_INVALID_ARG && n == 0) return raise_status(st);
    int32_t *ids = PyMem_Malloc((size_t)(n + 1) * sizeof *ids);
    if (!ids) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_chat_prompt(m, user, system, ids, (size_t)n, &n);
    Py_END_ALLOW_THREADS
    PyObject *ret = st == PST_OK ? ids_to_list(ids, n) : raise_status(st);
    PyMem_Free(ids);
    return ret;
}

/* llm_detokenize(llm, ids int32 buffer, flags) -> str (flags: PST_DETOKENIZE_*); the GIL is
 * released while the text is made */
static PyObject *m_llm_detokenize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "ids", "flags", NULL};
    pst_llm *m;
    PyObject *oids, *ret = NULL;
    int flags;
    Py_buffer b = {0};
    int64_t len = 0;
    char *text = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&Oi", kwlist, llm_arg, &m, &oids, &flags)) return NULL;
    if (get_buffer(oids, &b, 0, 4, "ids")) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_detokenize(m, b.buf, (size_t)(b.len / 4), flags, NULL, 0, &len);
    Py_END_ALLOW_THREADS
    if (st != PST_OK && !(st == PST_ERR_INVALID_ARG && (len > 0 || b.len == 0))) { raise_status(st); goto done; }
    text = PyMem_Malloc((size_t)len + 1);
    if (!text) { PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_detokenize(m, b.buf, (size_t)(b.len / 4), flags, text, (size_t)len + 1, &len);
    Py_END_ALLOW_THREADS
    ret = st == PST_OK ? PyUnicode_DecodeUTF8(text, (Py_ssize_t)len, "replace") : raise_status(st);
done:
    PyMem_Free(text);
    release(&b);
    return ret;
}

/* llm_logits(llm, ids int32 buffer, batch, seq_len, logits float32 buffer) */
static PyObject *m_llm_logits(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "ids", "batch", "seq_len", "logits", NULL};
    pst_llm *m;
    PyObject *oids, *oout;
    long long batch, seq;
    Py_buffer ids = {0}, out = {0};
    PyObject *ret = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OLLO", kwlist, llm_arg, &m, &oids, &batch, &seq, &oout)) return NULL;
    if (get_buffer(oids, &ids, 0, 4, "ids") || get_buffer(oout, &out, 1, 4, "logits")) goto done;
    if (ids.len / 4 != batch * seq) { PyErr_Format(PyExc_ValueError, "ids has %zd values, expected %lld", ids.len / 4, batch * seq); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_logits(m, ids.buf, batch, seq, out.buf, (size_t)(out.len / 4));
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = Py_NewRef(Py_None);
done:
    release(&ids); release(&out);
    return ret;
}

/* llm_loss(llm, ids, labels|None, batch, seq_len) -> float */
static PyObject *m_llm_loss(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "ids", "labels", "batch", "seq_len", NULL};
    pst_llm *m;
    PyObject *oids, *olab;
    long long batch, seq;
    Py_buffer ids = {0}, lab = {0};
    PyObject *ret = NULL;
    pst_status st;
    float loss = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OOLL", kwlist, llm_arg, &m, &oids, &olab, &batch, &seq)) return NULL;
    if (get_buffer(oids, &ids, 0, 4, "ids") || get_optional_buffer(olab, &lab, 4, "labels")) goto done;
    if (ids.len / 4 != batch * seq || (lab.buf && lab.len != ids.len)) {
        PyErr_Format(PyExc_ValueError, "ids and labels must hold batch * seq_len = %lld values", batch * seq);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_loss(m, ids.buf, lab.buf, batch, seq, &loss);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = PyFloat_FromDouble(loss);
done:
    release(&ids); release(&lab);
    return ret;
}

static PyObject *m_llm_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", NULL};
    pst_llm *m;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, llm_arg, &m)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_backward(m);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_zero_grad(llm): writes every adapter gradient, so the GIL is released */
static PyObject *m_llm_zero_grad(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", NULL};
    pst_llm *m;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, llm_arg, &m)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_zero_grad(m);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_set_training(llm, training): a flag, no GIL release */
static PyObject *m_llm_set_training(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "training", NULL};
    pst_llm *m;
    int training;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&p", kwlist, llm_arg, &m, &training)) return NULL;
    pst_status st = pst_llm_set_training(m, training);
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_add_adapter(llm, name, r, alpha, dropout, use_rslora, init, seed, target_modules|None): the
 * pst_lora_params fields; allocates and initializes every projection's A and B, so the GIL is
 * released */
static PyObject *m_llm_add_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "name", "r", "alpha", "dropout", "use_rslora", "init", "seed", "target_modules", NULL};
    pst_llm *m;
    const char *name, *targets = NULL;
    int r, rs, init;
    double alpha, dropout;
    unsigned long long seed;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&siddpiKz", kwlist, llm_arg, &m, &name, &r, &alpha, &dropout, &rs, &init,
                                     &seed, &targets)) return NULL;
    pst_lora_params p;
    if (pst_lora_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    p.r = r; p.alpha = (float)alpha; p.dropout = (float)dropout; p.use_rslora = rs; p.init = init; p.seed = seed;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_add_adapter(m, name, &p, targets);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_delete_adapter(llm, name) (None passes NULL, which the library refuses) */
static PyObject *m_llm_delete_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "name", NULL};
    pst_llm *m;
    const char *name = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&z", kwlist, llm_arg, &m, &name)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_delete_adapter(m, name);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_set_adapter(llm, name|None): None, the base model alone */
static PyObject *m_llm_set_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "name", NULL};
    pst_llm *m;
    const char *name = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&z", kwlist, llm_arg, &m, &name)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_set_adapter(m, name);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_save_adapter(llm, adapter, directory) */
static PyObject *m_llm_save_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "adapter", "directory", NULL};
    pst_llm *m;
    const char *adapter = NULL, *dir = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&zz", kwlist, llm_arg, &m, &adapter, &dir)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_save_adapter(m, adapter, dir);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_load_adapter(llm, directory, name) */
static PyObject *m_llm_load_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "directory", "name", NULL};
    pst_llm *m;
    const char *dir = NULL, *name = NULL;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&zz", kwlist, llm_arg, &m, &dir, &name)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_load_adapter(m, dir, name);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* llm_modules(llm) -> list[str]: pst_llm_module_count and pst_llm_module_at */
static PyObject *m_llm_modules(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", NULL};
    pst_llm *m;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, llm_arg, &m)) return NULL;
    int64_t n = 0;
    pst_status st = pst_llm_module_count(m, &n);
    if (st != PST_OK) return raise_status(st);
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l) return NULL;
    for (int64_t i = 0; i < n; i++) {
        const char *p = NULL;
        st = pst_llm_module_at(m, i, &p);
        if (st != PST_OK) { Py_DECREF(l); return raise_status(st); }
        PyList_SET_ITEM(l, (Py_ssize_t)i, PyUnicode_FromString(p));
    }
    return l;
}

/* llm_adapter_tensor(llm, module_path, adapter, which) -> (address, rows, cols) (which: PST_LORA_A, ...) */
static PyObject *m_llm_adapter_tensor(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "module_path", "adapter", "which", NULL};
    pst_llm *m;
    const char *module, *adapter;
    int which;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&ssi", kwlist, llm_arg, &m, &module, &adapter, &which)) return NULL;
    float *data = NULL;
    int64_t rows = 0, cols = 0;
    pst_status st = pst_llm_adapter_tensor(m, module, adapter, which, &data, &rows, &cols);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("(KLL)", (unsigned long long)(uintptr_t)data, (long long)rows, (long long)cols);
}

typedef struct { PyObject *fn; int failed; } py_callback;

/* Called by the engine, without the GIL, on whichever thread it runs: takes the GIL for the
 * Python callback and gives it back. After a callback has raised, no further call is made (its
 * exception stays set for the method to return) and the engine is asked to stop. */
static int32_t token_trampoline(int32_t token, const char *bytes, size_t n, void *user) {
    py_callback *cb = user;
    if (cb->failed) return 1;
    PyGILState_STATE g = PyGILState_Ensure();
    int32_t stop = 0;
    PyObject *r = PyObject_CallFunction(cb->fn, "iy#", (int)token, bytes, (Py_ssize_t)n);
    if (!r) { cb->failed = 1; stop = 1; }
    else { stop = r == Py_False; Py_DECREF(r); }
    PyGILState_Release(g);
    return stop;
}

/* llm_generate(llm, prompt int32 buffer, max_new_tokens, temperature, top_p, top_k, seed,
 *              disable_adapters, stop_at_eos, stop_ids int32 buffer|None, callback|None) -> list[int]:
 * the pst_generate_params fields; callback(token, bytes) runs with the GIL retaken */
static PyObject *m_llm_generate(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "prompt", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "disable_adapters",
                             "stop_at_eos", "stop_ids", "callback", NULL};
    pst_llm *m;
    PyObject *oprompt, *ostops, *fn;
    int max_new, top_k, disable, stop_eos;
    double temp, top_p;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OiddiKppOO", kwlist, llm_arg, &m, &oprompt, &max_new, &temp, &top_p, &top_k,
                                     &seed, &disable, &stop_eos, &ostops, &fn)) return NULL;
    Py_buffer pr = {0}, stops = {0};
    PyObject *ret = NULL;
    int32_t *out = NULL;
    if (get_buffer(oprompt, &pr, 0, 4, "prompt") || get_optional_buffer(ostops, &stops, 4, "stop_ids")) goto done;
    pst_generate_params p;
    if (pst_generate_params_init(&p) != PST_OK) { raise_status(PST_ERR_INTERNAL); goto done; }
    p.max_new_tokens = max_new; p.temperature = (float)temp; p.top_p = (float)top_p; p.top_k = top_k; p.seed = seed;
    p.disable_adapters = disable; p.stop_at_eos = stop_eos; p.stop_ids = stops.buf; p.stop_count = (int32_t)(stops.len / 4);
    size_t capn = max_new > 0 ? (size_t)max_new : 1;
    out = PyMem_Malloc(capn * sizeof *out);
    if (!out) { PyErr_NoMemory(); goto done; }
    py_callback cb = {fn, 0};
    int64_t n = 0;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_llm_generate(m, pr.buf, (size_t)(pr.len / 4), &p, fn == Py_None ? NULL : token_trampoline, &cb, out, capn, &n);
    Py_END_ALLOW_THREADS
    if (cb.failed) goto done;   /* the callback's exception propagates */
    if (st != PST_OK) { raise_status(st); goto done; }
    ret = ids_to_list(out, n < (int64_t)capn ? n : (int64_t)capn);
done:
    PyMem_Free(out);
    release(&pr); release(&stops);
    return ret;
}

/* ---- trainer */

static int dict_int(PyObject *d, const char *k, long long *v) {
    PyObject *o = PyDict_GetItemString(d, k);
    if (!o) { PyErr_Format(PyExc_KeyError, "trainer option %s missing", k); return -1; }
    *v = PyLong_AsLongLong(o);
    return PyErr_Occurred() ? -1 : 0;
}
static int dict_double(PyObject *d, const char *k, double *v) {
    PyObject *o = PyDict_GetItemString(d, k);
    if (!o) { PyErr_Format(PyExc_KeyError, "trainer option %s missing", k); return -1; }
    *v = PyFloat_AsDouble(o);
    return PyErr_Occurred() ? -1 : 0;
}
/* A borrowed UTF-8 pointer (NULL for None) valid while d holds the string. */
static int dict_str(PyObject *d, const char *k, const char **v) {
    PyObject *o = PyDict_GetItemString(d, k);
    if (!o || o == Py_None) { *v = NULL; return 0; }
    *v = PyUnicode_AsUTF8(o);
    return *v ? 0 : -1;
}

/* trainer_create(llm, data_paths: list[str], params: dict of the pst_trainer_params fields) -> capsule */
static PyObject *m_trainer_create(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"llm", "data_paths", "params", NULL};
    pst_llm *m;
    PyObject *opaths, *d;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O!O!", kwlist, llm_arg, &m, &PyList_Type, &opaths, &PyDict_Type, &d))
        return NULL;
    pst_trainer_params p;
    if (pst_trainer_params_init(&p) != PST_OK) return raise_status(PST_ERR_INTERNAL);
    long long fmt, seq, steps, bs, ga, warm, sched, o8, budget, r, seed, shuffle, ckpt, recompute;
    double lr, wd, clip, alpha, dropout;
    if (dict_int(d, "format", &fmt) || dict_int(d, "seq_len", &seq) || dict_int(d, "steps", &steps) ||
        dict_int(d, "batch_size", &bs) || dict_int(d, "gradient_accumulation", &ga) || dict_int(d, "warmup_steps", &warm) ||
        dict_int(d, "schedule", &sched) || dict_int(d, "optimizer_8bit", &o8) || dict_int(d, "paged_budget_bytes", &budget) ||
        dict_int(d, "r", &r) || dict_int(d, "seed", &seed) || dict_int(d, "shuffle", &shuffle) ||
        dict_int(d, "checkpoint_every", &ckpt) || dict_int(d, "recompute", &recompute) ||
        dict_double(d, "learning_rate", &lr) || dict_double(d, "weight_decay", &wd) || dict_double(d, "clip_norm", &clip) ||
        dict_double(d, "lora_alpha", &alpha) || dict_double(d, "lora_dropout", &dropout) ||
        dict_str(d, "target_modules", &p.target_modules) || dict_str(d, "output_dir", &p.output_dir) ||
        dict_str(d, "adapter_name", &p.adapter_name) || dict_str(d, "resume_from", &p.resume_from) ||
        dict_str(d, "text_separator", &p.text_separator) || dict_str(d, "system_prompt", &p.system_prompt)) return NULL;
    p.data_format = (int32_t)fmt; p.seq_len = (int32_t)seq; p.steps = steps; p.batch_size = (int32_t)bs;
    p.gradient_accumulation = (int32_t)ga; p.learning_rate = lr; p.warmup_steps = warm; p.schedule = (int32_t)sched;
    p.weight_decay = wd; p.clip_norm = clip; p.optimizer_state = o8 ? PST_OPTIM_STATE_8BIT : PST_OPTIM_STATE_F32;
    p.paged_budget_bytes = budget; p.lora_r = (int32_t)r; p.lora_alpha = (float)alpha; p.lora_dropout = (float)dropout;
    p.seed = (uint64_t)seed; p.shuffle = (int32_t)shuffle; p.checkpoint_every = ckpt; p.recompute = (int32_t)recompute;
    Py_ssize_t n = PyList_GET_SIZE(opaths);
    const char **paths = PyMem_Calloc((size_t)n + 1, sizeof *paths);
    if (!paths) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        paths[i] = PyUnicode_AsUTF8(PyList_GET_ITEM(opaths, i));
        if (!paths[i]) { PyMem_Free(paths); return NULL; }
    }
    pst_trainer *t = NULL;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_create(m, paths, (int32_t)n, &p, &t);
    Py_END_ALLOW_THREADS
    PyMem_Free(paths);
    if (st != PST_OK) return raise_status(st);
    return wrap_trainer(t);
}

static PyObject *progress_dict(const pst_train_progress *p) {
    return Py_BuildValue("{sL,sL,sd,sd,sd,sd,sL,sd,sz}", "step", (long long)p->step, "total_steps", (long long)p->total_steps,
                         "loss", (double)p->loss, "grad_norm", (double)p->grad_norm, "learning_rate", p->learning_rate,
                         "tokens_per_second", p->tokens_per_second, "resident_bytes", (long long)p->resident_bytes,
                         "elapsed_seconds", p->elapsed_seconds, "checkpoint", p->checkpoint);
}

/* trainer_step(trainer) -> dict */
static PyObject *m_trainer_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"trainer", NULL};
    pst_trainer *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, trainer_arg, &t)) return NULL;
    pst_train_progress p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_step(t, &p);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    return progress_dict(&p);
}

/* As token_trampoline, for pst_trainer_train's progress. */
static int32_t progress_trampoline(const pst_train_progress *p, void *user) {
    py_callback *cb = user;
    if (cb->failed) return 1;
    PyGILState_STATE g = PyGILState_Ensure();
    int32_t stop = 0;
    PyObject *d = progress_dict(p);
    PyObject *r = d ? PyObject_CallOneArg(cb->fn, d) : NULL;
    Py_XDECREF(d);
    if (!r) { cb->failed = 1; stop = 1; }
    else { stop = r == Py_False; Py_DECREF(r); }
    PyGILState_Release(g);
    return stop;
}

/* trainer_train(trainer, callback|None): callback(progress) runs with the GIL retaken */
static PyObject *m_trainer_train(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"trainer", "callback", NULL};
    pst_trainer *t;
    PyObject *fn;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O", kwlist, trainer_arg, &t, &fn)) return NULL;
    py_callback cb = {fn, 0};
    pst_status st;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_train(t, fn == Py_None ? NULL : progress_trampoline, &cb);
    Py_END_ALLOW_THREADS
    if (cb.failed) return NULL;
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* trainer_save_adapter(trainer, directory) */
static PyObject *m_trainer_save_adapter(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"trainer", "directory", NULL};
    pst_trainer *t;
    const char *dir;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s", kwlist, trainer_arg, &t, &dir)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_save_adapter(t, dir);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* trainer_save_checkpoint(trainer, directory) */
static PyObject *m_trainer_save_checkpoint(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"trainer", "directory", NULL};
    pst_trainer *t;
    const char *dir;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s", kwlist, trainer_arg, &t, &dir)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_save_checkpoint(t, dir);
    Py_END_ALLOW_THREADS
    if (st != PST_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* trainer_info(trainer) -> dict: pst_trainer_get_info */
static PyObject *m_trainer_info(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"trainer", NULL};
    pst_trainer *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, trainer_arg, &t)) return NULL;
    pst_trainer_info i;
    memset(&i, 0, sizeof i);
    i.struct_size = sizeof i;
    pst_status st = pst_trainer_get_info(t, &i);
    if (st != PST_OK) return raise_status(st);
    return Py_BuildValue("{sL,si,sL,sL,sL,sL,sL}", "rows", (long long)i.rows, "seq_len", i.seq_len, "tokens", (long long)i.tokens,
                         "target_tokens", (long long)i.target_tokens, "completed_steps", (long long)i.completed_steps,
                         "total_steps", (long long)i.total_steps, "trainable_parameters", (long long)i.trainable_parameters);
}

/* latest_checkpoint(directory) -> str | None: pst_trainer_latest_checkpoint; reads the directory,
 * so the GIL is released */
static PyObject *m_latest_checkpoint(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"directory", NULL};
    const char *dir;
    int64_t len = 0;
    pst_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s", kwlist, &dir)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_latest_checkpoint(dir, NULL, 0, &len);
    Py_END_ALLOW_THREADS
    if (st == PST_ERR_NOT_FOUND) Py_RETURN_NONE;
    if (st != PST_OK && len == 0) return raise_status(st);
    char *buf = PyMem_Malloc((size_t)len + 1);
    if (!buf) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    st = pst_trainer_latest_checkpoint(dir, buf, (size_t)len + 1, &len);
    Py_END_ALLOW_THREADS
    PyObject *ret = st == PST_OK ? PyUnicode_DecodeUTF8(buf, (Py_ssize_t)len, "strict") : raise_status(st);
    PyMem_Free(buf);
    return ret;
}

static PyMethodDef methods_llm[] = {
    KW_METHOD(llm_load, "path, quantize, quant_type, blocksize, double_quant, pretokenizer, compute_dtype",
              "pst_llm_load -> llm capsule."),
    KW_METHOD(llm_set_compute_dtype, "llm, dtype", "pst_llm_set_compute_dtype."),
    KW_METHOD(llm_info, "llm", "pst_llm_get_info -> dict."),
    KW_METHOD(llm_tokenize, "llm, text, flags", "pst_llm_tokenize -> list[int]."),
    KW_METHOD(llm_chat_prompt, "llm, user, system", "pst_llm_chat_prompt -> list[int]."),
    KW_METHOD(llm_detokenize, "llm, ids, flags", "pst_llm_detokenize -> str."),
    KW_METHOD(llm_logits, "llm, ids, batch, seq_len, logits", "pst_llm_logits into a float32 buffer."),
    KW_METHOD(llm_loss, "llm, ids, labels, batch, seq_len", "pst_llm_loss -> float."),
    KW_METHOD(llm_backward, "llm", "pst_llm_backward."),
    KW_METHOD(llm_zero_grad, "llm", "pst_llm_zero_grad."),
    KW_METHOD(llm_set_training, "llm, training", "pst_llm_set_training."),
    KW_METHOD(llm_add_adapter, "llm, name, r, alpha, dropout, use_rslora, init, seed, target_modules", "pst_llm_add_adapter."),
    KW_METHOD(llm_delete_adapter, "llm, name", "pst_llm_delete_adapter."),
    KW_METHOD(llm_set_adapter, "llm, name", "pst_llm_set_adapter (None: the base model alone)."),
    KW_METHOD(llm_save_adapter, "llm, adapter, directory", "pst_llm_save_adapter."),
    KW_METHOD(llm_load_adapter, "llm, directory, name", "pst_llm_load_adapter."),
    KW_METHOD(llm_modules, "llm", "pst_llm_module_count / pst_llm_module_at -> list[str]."),
    KW_METHOD(llm_adapter_tensor, "llm, module_path, adapter, which", "pst_llm_adapter_tensor -> (address, rows, cols)."),
    KW_METHOD(llm_generate, "llm, prompt, max_new_tokens, temperature, top_p, top_k, seed, disable_adapters, stop_at_eos, "
              "stop_ids, callback", "pst_llm_generate -> list[int]."),
    KW_METHOD(trainer_create, "llm, data_paths, params", "pst_trainer_create -> trainer capsule (borrows llm)."),
    KW_METHOD(trainer_step, "trainer", "pst_trainer_step -> progress dict."),
    KW_METHOD(trainer_train, "trainer, callback", "pst_trainer_train."),
    KW_METHOD(trainer_save_adapter, "trainer, directory", "pst_trainer_save_adapter."),
    KW_METHOD(trainer_save_checkpoint, "trainer, directory", "pst_trainer_save_checkpoint."),
    KW_METHOD(trainer_info, "trainer", "pst_trainer_get_info -> dict."),
    KW_METHOD(latest_checkpoint, "directory", "pst_trainer_latest_checkpoint -> str | None."),
    {NULL, NULL, 0, NULL},
};
