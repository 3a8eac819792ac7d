"""The thin C layer itself (peftswift._native): the header's constants exported under their C
names, keyword arguments on every method, one handle type check for every kind of handle,
no opcode multiplexers."""
import ast
import datetime
import inspect
import pathlib
import re

import numpy as np
import pytest

import peftswift
from peftswift import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "bindings/python/peftswift"

# `#define PST_NAME 12`, `#define PST_NAME (-1)`, `#define PST_NAME 0x10`, a comment may follow
_INT_DEFINE = re.compile(r"^\s*#\s*define\s+(PST_\w+)\s+\(?\s*(-?(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*\s*\)?\s*(?:/[*/].*)?$")


def _header_integer_constants(path):
    out = {}
    for line in path.read_text().splitlines():
        m = _INT_DEFINE.match(line)
        if m:
            out[m.group(1)] = int(m.group(2), 0)
    return out


def _native_functions():
    return {n: f for n, f in vars(_native).items() if callable(f) and type(f).__name__ == "builtin_function_or_method"}


def test_every_integer_constant_of_the_header_is_exported_with_its_value():
    consts = _header_integer_constants(ROOT / "include/peftswift.h")
    assert len(consts) > 40 and "PST_QUANT_NF4" in consts and "PST_SAFETENSORS_NO_METADATA" in consts
    missing = sorted(n for n in consts if not hasattr(_native, n))
    assert not missing, f"include/peftswift.h defines these, _native does not export them: {missing}"
    wrong = {n: (getattr(_native, n), v) for n, v in consts.items() if getattr(_native, n) != v}
    assert not wrong, f"(exported, header) values differ: {wrong}"
    assert _native.PST_VERSION_STRING == peftswift.__version__


def test_the_installed_header_agrees_with_the_source_header():
    """The header shipped in the package (what the extension was built with) defines the same."""
    shipped = pathlib.Path(peftswift.__file__).parent / "include/peftswift.h"
    assert _header_integer_constants(shipped) == _header_integer_constants(ROOT / "include/peftswift.h")


def test_the_python_layer_types_no_constant_of_the_header():
    """No mapping of names to bare numbers that the header defines (the C names are used)."""
    for path in sorted(PKG.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and node.values and all(
                    isinstance(v, ast.Constant) and type(v.value) is int for v in node.values):
                pytest.fail(f"{path.name}:{node.lineno}: a dict of bare integers; use the _native.PST_* constants")


def test_every_native_method_takes_keywords():
    for name, f in sorted(_native_functions().items()):
        params = list(inspect.signature(f).parameters.values())
        if not params:
            continue
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params), name
        with pytest.raises(TypeError) as e:
            f(_probe_=None)
        msg = str(e.value)
        assert "keyword" not in msg, f"{name}: {msg}"
        # the C kwlist starts with the parameter the text signature names first
        assert f"missing required argument '{params[0].name}'" in msg, f"{name}: {msg}"


def test_the_python_layer_calls_the_native_methods_by_keyword():
    """Every _native call in peftswift/*.py passes keywords that the method declares, so the whole
    suite exercises every C kwlist."""
    funcs = _native_functions()
    calls = 0
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "_native"):
                continue
            where = f"{path.name}:{node.lineno} _native.{node.func.attr}"
            assert node.func.attr in funcs, f"{where}: no such native method"
            params = inspect.signature(funcs[node.func.attr]).parameters
            assert not node.args, f"{where}: positional arguments"
            unknown = [k.arg for k in node.keywords if k.arg not in params]
            assert not unknown, f"{where}: unknown keywords {unknown}"
            calls += 1
    assert calls > 60


def test_no_opcode_multiplexers():
    funcs = _native_functions()
    for gone in ("llm_simple", "llm_adapter_op", "trainer_save"):
        assert gone not in funcs
    for name in ("llm_backward", "llm_zero_grad", "llm_set_training", "llm_delete_adapter", "llm_set_adapter",
                 "llm_save_adapter", "llm_load_adapter", "trainer_save_adapter", "trainer_save_checkpoint"):
        assert name in funcs
    for name, f in funcs.items():
        assert not {"op", "mode", "opcode"} & set(inspect.signature(f).parameters), name


def test_a_handle_of_another_kind_is_a_type_error(tmp_path):
    pager = peftswift.Pager(8 << 20, 1 << 20, str(tmp_path))
    layer = peftswift.LoraLinear(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"^expected a peftswift\.lora handle, got a peftswift\.pager handle$"):
        _native.lora_zero_grad(layer=pager._h)
    with pytest.raises(TypeError, match=r"^expected a peftswift\.pager handle, got a peftswift\.lora handle$"):
        _native.pager_stats(pager=layer._h)
    with pytest.raises(TypeError, match=r"^expected a peftswift\.adamw handle, got NoneType$"):
        _native.adamw_step(opt=None)
    with pytest.raises(TypeError, match=r"got a datetime\.datetime_CAPI handle"):
        _native.llm_info(llm=datetime.datetime_CAPI)
    with pytest.raises(TypeError, match=r"^expected a peftswift\.lora handle, got int$"):
        _native.peft_save(directory=str(tmp_path), adapter_name="a", layers=[layer._h, 3], module_paths=["a", "b"],
                          base_model_name_or_path=None)
    with pytest.raises(TypeError, match=r"^expected a peftswift\.quant handle, got a peftswift\.lora handle$"):
        _native.bnb_save(path=str(tmp_path / "w.safetensors"), weights=[layer._h], biases=[None], modules=["m"])
    # an optional handle: None is no pager, anything else must be one
    assert _native.adamw_create(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, state_format=0,
                                min_8bit_size=4096, pager=None) is not None
    with pytest.raises(TypeError, match=r"^expected a peftswift\.pager handle, got str$"):
        _native.adamw_create(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, state_format=0,
                             min_8bit_size=4096, pager="pager")
    layer.zero_grad()  # the handles that were refused still work
    assert pager.stats()["budget_bytes"] == 8 << 20


def test_positional_calls_still_work():
    out = np.empty(16, dtype=np.float32)
    _native.codebook(_native.PST_CODE_NF4, out)
    assert out[7] == 0.0 and out[-1] == 1.0
    assert _native.status_string(_native.PST_ERR_SHAPE) == _native.status_string(status=3)


# The native methods that release the GIL around their library call; the package docstring
# (help(peftswift), "Threads and the GIL") names the Python API over them.
RELEASES_THE_GIL = {
    "quantize_4bit", "dequantize_4bit", "quantize_8bit", "dequantize_8bit", "double_quantize",
    "quant_from_state", "lora_create_dense", "lora_create_quantized", "lora_add_adapter", "lora_forward",
    "lora_backward", "lora_zero_grad", "lora_merge", "lora_unmerge", "lora_base_weight",
    "quant_borrow_state", "lora_create_dense_borrowed", "lora_apply", "lora_apply_backward",
    "pager_create", "pager_set_budget", "paged_alloc", "paged_acquire",
    "adamw_add_param", "adamw_step", "adamw_zero_grad", "adamw_clip_grad_norm", "adamw_save_state", "adamw_load_state",
    "st_open", "st_write", "peft_save", "peft_load", "bnb_save", "bnb_load",
    "llm_load", "llm_tokenize", "llm_chat_prompt", "llm_detokenize", "llm_logits", "llm_loss", "llm_backward",
    "llm_zero_grad", "llm_add_adapter", "llm_delete_adapter", "llm_set_adapter", "llm_save_adapter",
    "llm_load_adapter", "llm_generate", "trainer_create", "trainer_step", "trainer_train", "trainer_save_adapter",
    "trainer_save_checkpoint", "latest_checkpoint",
}


def test_the_calls_that_release_the_gil_are_the_documented_ones():
    src = "".join(p.read_text() for p in sorted((ROOT / "bindings/python/src").glob("*.c")))
    bodies = {m.group(1): m.group(0) for m in re.finditer(r"static PyObject \*m_(\w+)\(.*?\n\}\n", src, re.S)}
    assert set(bodies) == set(_native_functions())
    released = {n for n, b in bodies.items() if "Py_BEGIN_ALLOW_THREADS" in b}
    assert released == RELEASES_THE_GIL, (sorted(released - RELEASES_THE_GIL), sorted(RELEASES_THE_GIL - released))
    doc = peftswift.__doc__
    assert "Threads and the GIL" in doc and "MisuseError" in doc
