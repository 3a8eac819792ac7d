"""Files through the engine, against the real safetensors, PEFT and bitsandbytes packages."""
import json
import os
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

import peftswift
from fourbit_ref import check_bnb_dequantize, decode_4bit

warnings.filterwarnings("ignore")
safetensors_np = pytest.importorskip("safetensors.numpy")
peft = pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")


def sample_tensors(rng):
    return {
        "w.f32": rng.standard_normal((7, 5)).astype(np.float32),
        "w.f16": rng.standard_normal((3, 4)).astype(np.float16),
        "w.bf16": rng.standard_normal((2, 9)).astype(ml_dtypes.bfloat16),
        "ids.i64": rng.integers(-2**40, 2**40, (6,), dtype=np.int64),
        "ids.i32": rng.integers(-1000, 1000, (2, 2, 2), dtype=np.int32),
        "codes.u8": rng.integers(0, 255, (11,), dtype=np.uint8),
        "q.i8": rng.integers(-128, 127, (4,), dtype=np.int8),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_safetensors_both_ways_bit_exact(rng, tmp_path):
    t = sample_tensors(rng)
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    peftswift.files.save_file(t, ours, metadata={"format": "pt"})
    safetensors_np.save_file(t, str(theirs), metadata={"format": "pt"})
    assert ours.read_bytes() == theirs.read_bytes()  # the same bytes as the Python package
    back = safetensors_np.load_file(str(ours))
    mine = peftswift.files.load_file(theirs)
    assert set(back) == set(mine) == set(t)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and mine[k].dtype == v.dtype and mine[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes() == mine[k].tobytes()
    assert peftswift.files.load_metadata(theirs) == {"format": "pt"}
    with peftswift.files.SafeTensors(theirs) as fh:
        assert sorted(fh.keys()) == sorted(t) and fh.metadata() == {"format": "pt"}
        assert fh.get_tensor("ids.i64").tobytes() == t["ids.i64"].tobytes()
        with pytest.raises(KeyError):
            fh.get_tensor("nope")
    assert not mine["w.f32"].flags.writeable


def test_safetensors_bad_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    safetensors_np.save_file({"a": np.arange(10, dtype=np.float32)}, str(good))
    data = good.read_bytes()
    cases = {
        "truncated": data[:-4],
        "header_beyond_file": (10**6).to_bytes(8, "little") + data[8:],
        "bad_json": data[:8] + b"[" + data[9:],
        "short": b"\x01\x02",
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(peftswift.CorruptDataError) as e:
            peftswift.files.load_file(p)
        assert p.name in str(e.value), str(e.value)
    with pytest.raises(peftswift.NotFoundError, match="missing.safetensors"):
        peftswift.files.load_file(tmp_path / "missing.safetensors")


def test_failed_write_leaves_existing_file_intact(tmp_path):
    """A write that fails mid-way (file size limit: EFBIG) leaves the old file as it was and
    no temporary file behind."""
    target = tmp_path / "model.safetensors"
    safetensors_np.save_file({"old": np.ones(4, dtype=np.float32)}, str(target))
    before = target.read_bytes()
    code = f"""
import resource, signal, numpy as np, peftswift
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
try:
    peftswift.files.save_file({{"big": np.ones(1 << 20, dtype=np.float32)}}, {str(target)!r})
except peftswift.IOError as e:
    print("IOError", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "IOError" in r.stdout, r.stdout + r.stderr
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def both_write(tmp_path, tensors, metadata, tag="t"):
    """(ours, theirs): the bytes peftswift.files.save_file and safetensors.numpy.save_file write."""
    ours, theirs = tmp_path / f"{tag}.ours.safetensors", tmp_path / f"{tag}.theirs.safetensors"
    peftswift.files.save_file(tensors, ours, metadata=metadata)
    safetensors_np.save_file(tensors, str(theirs), metadata=metadata)
    return ours.read_bytes(), theirs.read_bytes()


def header_of(blob):
    n = int.from_bytes(blob[:8], "little")
    return blob[8:8 + n]


BIG_ENDIAN = [">f4", ">i8", ">u2", ">f8", ">f2", ">i4", ">i2", ">u4", ">u8", ">b1", ">u1", ">i1"]


@pytest.mark.parametrize("dt", BIG_ENDIAN)
def test_big_endian_arrays_are_written_little_endian(rng, tmp_path, dt):
    """A '>f4' array is written as safetensors.numpy writes it: byte-swapped to the file's
    little-endian order, values intact (it used to keep its big-endian bytes under F32, so
    [0, 1, 2, 3, 4] read back as [0, 4.6e-41, ...])."""
    a = (rng.standard_normal((3, 5)) * 100).astype(dt)
    t = {"be": a, "be_scalar": np.array(7, dtype=dt), "be_empty": np.zeros((0, 2), dtype=dt),
         "native": a.astype(a.dtype.newbyteorder("="))}
    ours, theirs = both_write(tmp_path, t, {"format": "np"})
    assert ours == theirs
    back = peftswift.files.load_file(tmp_path / "t.ours.safetensors")
    for k, v in t.items():
        assert back[k].dtype == v.dtype.newbyteorder("=") and back[k].dtype.isnative
        np.testing.assert_array_equal(back[k], v)
    np.testing.assert_array_equal(safetensors_np.load_file(str(tmp_path / "t.ours.safetensors"))["be"], a)
    # a non-contiguous big-endian view: values in C order (safetensors.numpy writes such views
    # in memory order, transposed, so there is nothing to compare bytes with)
    peftswift.files.save_file({"be_T": a.T}, tmp_path / "T.safetensors")
    np.testing.assert_array_equal(peftswift.files.load_file(tmp_path / "T.safetensors")["be_T"], a.T)
    # the example from the report
    peftswift.files.save_file({"x": np.arange(5, dtype=">f4")}, tmp_path / "x.safetensors")
    assert peftswift.files.load_file(tmp_path / "x.safetensors")["x"].tolist() == [0, 1, 2, 3, 4]


def test_big_endian_bfloat16_and_torch(tmp_path):
    bf = np.arange(6).astype(np.dtype(ml_dtypes.bfloat16).newbyteorder(">"))
    ours, theirs = both_write(tmp_path, {"bf": bf, "f": np.arange(3, dtype=">f4")}, None)
    assert ours == theirs
    back = peftswift.files.load_file(tmp_path / "t.ours.safetensors")["bf"]
    assert back.astype(np.float32).tolist() == list(range(6))
    peftswift.files.save_file({"t": torch.arange(4, dtype=torch.float32)}, tmp_path / "torch.safetensors")
    assert peftswift.files.load_file(tmp_path / "torch.safetensors")["t"].tolist() == [0, 1, 2, 3]


def test_big_endian_arrays_at_the_other_entry_points(rng, tmp_path):
    """save_bnb_checkpoint (absmax, code, bias) and LoraLinear.quantized convert non-native
    arrays; a buffer in the other byte order reaching the extension is refused, never used."""
    w = rng.standard_normal((16, 64)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    for dq in (False, True):
        packed, st = peftswift.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        peftswift.save_bnb_checkpoint(tmp_path / "native.safetensors", {"p": (packed, st, bias)})
        swapped = peftswift.QuantState.from_dict(st.as_dict())
        swapped.absmax = swapped.absmax.astype(swapped.absmax.dtype.newbyteorder(">"))
        swapped.code = swapped.code.astype(">f4")
        if dq:
            swapped.state2.absmax = swapped.state2.absmax.astype(">f4")
            swapped.state2.code = swapped.state2.code.astype(">f4")
        peftswift.save_bnb_checkpoint(tmp_path / "swapped.safetensors", {"p": (packed, swapped, bias.astype(">f4"))})
        assert (tmp_path / "swapped.safetensors").read_bytes() == (tmp_path / "native.safetensors").read_bytes()
        x = rng.standard_normal((2, 64)).astype(np.float32)
        want = peftswift.LoraLinear.quantized(packed, st, bias)(x)
        np.testing.assert_array_equal(peftswift.LoraLinear.quantized(packed, swapped, bias.astype(">f4"))(x), want)
        np.testing.assert_array_equal(peftswift.dequantize_4bit(packed, swapped), peftswift.dequantize_4bit(packed, st))
    lin = peftswift.LoraLinear(w.astype(">f4"), bias.astype(">f4"))
    np.testing.assert_array_equal(lin(np.ones((1, 64), ">f4")), peftswift.LoraLinear(w, bias)(np.ones((1, 64), np.float32)))
    with pytest.raises(TypeError, match="native .*byte order, got format '>f'"):
        peftswift._native.codebook(0, np.zeros(16, dtype=">f4"))


NUL = {"k\x00a": "v\x00w"}
METADATA_CASES = {
    "none": None,
    "empty": {},
    "one": {"a": "b"},
    "format_pt": {"format": "pt"},
    "unicode": {"schön 😀": "ünïcödé \u2028 😀 \U0010ffff"},
    "nul": NUL,
    "controls": {"c": "\x01\x1f\t\n\r\"\\/\x7f"},
    "long_4097": {"ss_tag_frequency": "x" * 4097},
    "long_1mb": {"ss_tag_frequency": json.dumps({f"tag{i}": i for i in range(60000)})},
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_metadata_byte_for_byte(rng, tmp_path, case):
    """The same bytes as safetensors.numpy.save_file for metadata None, {}, one key, unicode,
    NUL characters, control characters and values over the old 4096-byte cap."""
    md = METADATA_CASES[case]
    t = {"w": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.arange(3, dtype=np.int64)}
    ours, theirs = both_write(tmp_path, t, md)
    assert ours == theirs, (header_of(ours)[:200], header_of(theirs)[:200])
    # and both read it back whole: the package and peftswift, on either file
    for f in ("t.ours.safetensors", "t.theirs.safetensors"):
        assert peftswift.files.load_metadata(tmp_path / f) == (md or {})
        with peftswift.files.SafeTensors(tmp_path / f) as fh:
            assert fh.metadata() == (md or {})
        from safetensors import safe_open
        with safe_open(str(tmp_path / f), "np") as fh:
            assert fh.metadata() == md


def test_nul_in_metadata_and_names(tmp_path):
    r"""{"k\x00a": "v\x00w"} was written as {"k": "v"}, and a file holding "a\u0000b" read back
    as "a": now written as \u0000 escapes and read back whole, names included."""
    t = {"a\x00b": np.arange(3, dtype=np.float32), "a": np.ones(2, dtype=np.float32), "\x00": np.zeros(1, np.uint8)}
    ours, theirs = both_write(tmp_path, t, NUL)
    assert ours == theirs
    assert b'"k\\u0000a":"v\\u0000w"' in header_of(ours) and b'"a\\u0000b":' in header_of(ours)
    back = peftswift.files.load_file(tmp_path / "t.theirs.safetensors")
    assert sorted(back) == sorted(t)
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
    assert peftswift.files.load_metadata(tmp_path / "t.theirs.safetensors") == NUL
    with peftswift.files.SafeTensors(tmp_path / "t.theirs.safetensors") as fh:
        assert sorted(fh.keys()) == sorted(t) and fh.metadata() == NUL
        np.testing.assert_array_equal(fh.get_tensor("a\x00b"), t["a\x00b"])
        with pytest.raises(KeyError) as e:
            fh.get_tensor("a\x00c")
        assert e.value.args[0].endswith(r'no tensor "a\u0000c"') and isinstance(e.value, peftswift.NotFoundError)
    # a file holding the JSON escape, as another writer would produce it
    hdr = b'{"__metadata__":{"a":"a\\u0000b"},"x\\u0000y":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    (tmp_path / "escaped.safetensors").write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\x07")
    assert peftswift.files.load_metadata(tmp_path / "escaped.safetensors") == {"a": "a\x00b"}
    assert list(peftswift.files.load_file(tmp_path / "escaped.safetensors")) == ["x\x00y"]
    assert safetensors_np.load_file(str(tmp_path / "escaped.safetensors"))["x\x00y"].tolist() == [7]


def test_metadata_keys_in_order_given(tmp_path):
    """Several keys: safetensors writes them in a random hash order (different in every process),
    so only the parsed header and the data can be compared; peftswift keeps the given order."""
    t = {"w": np.arange(4, dtype=np.float32)}
    md = {"b": "1", "a": "2", "c\x00": "3", "d": "x" * 5000}
    ours, theirs = both_write(tmp_path, t, md)
    assert len(ours) == len(theirs) and ours[-16:] == theirs[-16:]
    assert json.loads(header_of(ours)) == json.loads(header_of(theirs))
    assert list(json.loads(header_of(ours))["__metadata__"]) == list(md)


def test_no_tensors(tmp_path):
    """No tensors: byte for byte for metadata None and {"a": "b"}. With metadata={} safetensors
    0.8.0 writes `{},"__metadata__":{}}`, which neither it nor anyone can read (its Serialize
    announces a map of tensors + metadata entries, 0 here, and serde_json closes it at once):
    peftswift writes `{"__metadata__":{}}`, which both read."""
    for md in (None, {"a": "b"}):
        ours, theirs = both_write(tmp_path, {}, md)
        assert ours == theirs
    ours, theirs = both_write(tmp_path, {}, {})
    assert header_of(ours) == b'{"__metadata__":{}}     '
    try:
        safetensors_np.load(theirs)
        assert ours == theirs  # a fixed safetensors: then the same bytes
    except Exception:
        assert header_of(theirs).startswith(b"{},")
    assert safetensors_np.load(ours) == {}
    from safetensors import safe_open
    with safe_open(str(tmp_path / "t.ours.safetensors"), "np") as fh:
        assert fh.metadata() == {}


def test_header_limit_is_the_formats(tmp_path):
    """No cap on a value of its own; the header is limited as safetensors limits it
    (MAX_HEADER_SIZE, 100,000,000 bytes after padding): at the limit both write the same
    bytes, one byte more both refuse, and the existing file is left as it was."""
    t = {"a": np.arange(3, dtype=np.float32)}
    base = len(b'{"__metadata__":{"k":""},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}')
    at = "x" * (100_000_000 - base)
    ours, theirs = both_write(tmp_path, t, {"k": at})
    assert len(header_of(ours)) == 100_000_000 and ours == theirs
    del ours, theirs
    before = (tmp_path / "t.ours.safetensors").read_bytes()[-12:]
    with pytest.raises(Exception, match="header too large"):
        safetensors_np.save_file(t, str(tmp_path / "t.theirs.safetensors"), metadata={"k": at + "x"})
    with pytest.raises(peftswift.InvalidArgumentError, match="100000008 bytes.*100000000") as e:
        peftswift.files.save_file({"a": np.ones(3, np.float32)}, tmp_path / "t.ours.safetensors", metadata={"k": at + "x"})
    assert e.value.status == 1 and "pst_safetensors_write_v2" in str(e.value)
    assert (tmp_path / "t.ours.safetensors").read_bytes()[-12:] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.ours.safetensors", "t.theirs.safetensors"]


def test_bad_names_and_metadata_are_clear_errors(tmp_path):
    """As safetensors: keys and values must be str (TypeError, no str() of other objects); lone
    surrogates cannot be UTF-8 (UnicodeEncodeError); a tensor may not be named __metadata__."""
    t = {"a": np.ones(2, np.float32)}
    for md in ({"a": 1}, {1: "a"}, {"a": b"x"}):
        with pytest.raises(TypeError):
            safetensors_np.save_file(t, str(tmp_path / "x.safetensors"), metadata=md)
        with pytest.raises(TypeError, match=r"metadata( key 1 is int|\['a'\] is (int|bytes)), not str"):
            peftswift.files.save_file(t, tmp_path / "x.safetensors", metadata=md)
    with pytest.raises(TypeError, match="metadata value 0 must be str, not int"):  # the extension checks too
        peftswift._native.st_write(str(tmp_path / "x.safetensors"), [], {"a": 1})
    with pytest.raises(UnicodeEncodeError):
        peftswift.files.save_file(t, tmp_path / "x.safetensors", metadata={"a": "\udc80"})
    with pytest.raises(UnicodeEncodeError):
        peftswift.files.save_file({"\udc80": np.ones(1, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="tensor names must be str"):
        peftswift.files.save_file({1: np.ones(1, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(peftswift.InvalidArgumentError, match="__metadata__"):
        peftswift.files.save_file({"__metadata__": np.ones(1, np.float32)}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


class Tiny(torch.nn.Module):
    """Module names as in a transformer: model.layers.N.self_attn.q_proj / mlp.down_proj."""

    def __init__(self, linear=torch.nn.Linear):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList()
        for _ in range(2):
            layer = torch.nn.Module()
            layer.self_attn = torch.nn.Module()
            layer.self_attn.q_proj = linear(64, 32)
            layer.mlp = torch.nn.Module()
            layer.mlp.down_proj = linear(32, 64)
            self.model.layers.append(layer)

    def forward(self, x):
        outs = []
        for l in self.model.layers:
            outs.append(l.mlp.down_proj(l.self_attn.q_proj(x)))
        return torch.cat(outs, -1)


PATHS = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")]


def module(model, path):
    m = model
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


def our_layers(model):
    out = {}
    for p in PATHS:
        lin = module(model, p)
        out[p] = peftswift.LoraLinear(lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy())
    return out


def run_ours(layers, x):
    ys = []
    for i in range(2):
        h = layers[f"model.layers.{i}.self_attn.q_proj"].eval()(x)
        ys.append(layers[f"model.layers.{i}.mlp.down_proj"].eval()(h))
    return np.concatenate(ys, -1)


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_saved_by_peftswift_loads_in_peft(rng, tmp_path, rslora):
    torch.manual_seed(0)
    base = Tiny()
    layers = our_layers(base)
    for p, l in layers.items():
        l.add_adapter("default", r=4, lora_alpha=8, use_rslora=rslora)
        l.lora_B()[...] = rng.standard_normal(l.lora_B().shape).astype(np.float32) * 0.1
    peftswift.save_adapter(tmp_path / "ad", layers, base_model_name_or_path="tiny")
    cfg = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["use_rslora"] == rslora
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "ad")).eval()
    x = rng.standard_normal((5, 64)).astype(np.float32)
    with torch.no_grad():
        ref = pm(torch.from_numpy(x)).numpy()
    got = run_ours(layers, x)
    assert np.abs(got - ref).max() <= 1e-5 * max(1, np.abs(ref).max())


@pytest.mark.parametrize("rslora,dropout", [(False, 0.0), (True, 0.1)])
def test_adapter_saved_by_peft_loads_into_peftswift(rng, tmp_path, rslora, dropout):
    torch.manual_seed(1)
    base = Tiny()
    layers = our_layers(base)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, use_rslora=rslora, bias="none",
                          target_modules=["q_proj", "down_proj"])
    pm = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    pm.save_pretrained(str(tmp_path / "ad"))
    pm.eval()
    peftswift.load_adapter(tmp_path / "ad", layers, "loaded")
    for l in layers.values():
        l.set_adapter("loaded")
    x = rng.standard_normal((5, 64)).astype(np.float32)
    with torch.no_grad():
        ref = pm(torch.from_numpy(x)).numpy()
    got = run_ours(layers, x)
    assert np.abs(got - ref).max() <= 1e-5 * max(1, np.abs(ref).max())
    # two adapters side by side, each from its own directory
    peftswift.load_adapter(tmp_path / "ad", layers, "again")
    with pytest.raises(peftswift.ExistsError):
        peftswift.load_adapter(tmp_path / "ad", layers, "again")


# Two fp32 layers of <= 64-term dot products plus a rank-4 LoRA branch: the worst-case rounding
# bound is about (64 + 32 + 2 * 4 + 4) * 2^-24 ~ 7e-6 of the magnitudes involved (Higham,
# "Accuracy and Stability of Numerical Algorithms", 3.1: |fl(x.y) - x.y| <= n u |x|.|y|).
FP32_TINY_RTOL = 1e-5


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_adapter_on_4bit_base_loads_in_peft(rng, tmp_path):
    """peftswift's QLoRA layers (nf4 + double quant) save an adapter that PEFT loads onto a
    model of bitsandbytes Linear4bit layers with the same weights; outputs agree.
    The arbiter is the float64 math on the weights decoded from the format by numpy; PEFT is
    also run on a dense model holding those decoded weights (the adapter file alone under test),
    and on bitsandbytes' Linear4bit in its fp32 path where bitsandbytes decodes correctly."""
    torch.manual_seed(2)
    dense = Tiny()
    qmodel = Tiny(lambda i, o: bnb.nn.Linear4bit(i, o, bias=True, compute_dtype=torch.float32, quant_type="nf4",
                                                 compress_statistics=True))
    for p in PATHS:
        d, q = module(dense, p), module(qmodel, p)
        q.weight = bnb.nn.Params4bit(d.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
        q.bias = torch.nn.Parameter(d.bias.data.clone(), requires_grad=False)
    qmodel = qmodel.to("cpu")
    qmodel.is_loaded_in_4bit = True
    layers, decoded = {}, {}
    for p in PATHS:
        q = module(qmodel, p)
        # bitsandbytes' eval-mode forward on AVX512-BF16 CPUs repacks the weight to a lossy bf16
        # layout (FORMATS.md section 8; test_llm.py shows it): keep the fp32 path QLoRA trains on
        q.support_avx512bf16_for_cpu = False
        sd = q.state_dict()
        st = peftswift.QuantState.from_dict({k[7:]: v for k, v in sd.items() if k.startswith("weight.")})
        l = peftswift.LoraLinear.quantized(sd["weight"].numpy(), st, sd["bias"].numpy())
        l.add_adapter("default", r=4, lora_alpha=8)
        l.lora_B()[...] = rng.standard_normal(l.lora_B().shape).astype(np.float32) * 0.1
        layers[p] = l
        decoded[p] = decode_4bit(sd["weight"], q.weight.quant_state)
        np.testing.assert_array_equal(peftswift.dequantize_4bit(sd["weight"].numpy(), st), decoded[p])
    peftswift.save_adapter(tmp_path / "qad", layers)
    x = rng.standard_normal((3, 64)).astype(np.float32)

    def arbiter():
        ys = []
        for i in range(2):
            h = x.astype(np.float64)
            for p in (f"model.layers.{i}.self_attn.q_proj", f"model.layers.{i}.mlp.down_proj"):
                l = layers[p]
                s = 8 / 4
                h = (h @ decoded[p].astype(np.float64).T + module(dense, p).bias.detach().numpy().astype(np.float64)
                     + s * (h @ l.lora_A().astype(np.float64).T) @ l.lora_B().astype(np.float64).T)
            ys.append(h)
        return np.concatenate(ys, -1)

    exact = arbiter()
    got = run_ours(layers, x)
    print(f"peftswift vs float64: {_rel(got, exact):.3g}")
    assert _rel(got, exact) <= FP32_TINY_RTOL
    # PEFT reads the adapter file as peftswift wrote it: on a dense model with the decoded weights
    ddense = Tiny()
    with torch.no_grad():
        for p in PATHS:
            module(ddense, p).weight.copy_(torch.from_numpy(decoded[p]))
            module(ddense, p).bias.copy_(module(dense, p).bias)
    pm = peft.PeftModel.from_pretrained(ddense, str(tmp_path / "qad")).eval()
    with torch.no_grad():
        ref = pm(torch.from_numpy(x)).numpy()
    print(f"PEFT (dense, decoded weights) vs float64: {_rel(ref, exact):.3g}; peftswift vs it: {_rel(got, ref):.3g}")
    assert _rel(ref, exact) <= FP32_TINY_RTOL
    # and on bitsandbytes' Linear4bit, where its dequantization of these shapes is right
    pmq = peft.PeftModel.from_pretrained(qmodel, str(tmp_path / "qad")).eval()
    with torch.no_grad():
        refq = pmq(torch.from_numpy(x)).numpy()
    bnb_right = all([check_bnb_dequantize(
        bnb.functional.dequantize_4bit(module(qmodel, p).weight.data, module(qmodel, p).weight.quant_state).numpy(),
        decoded[p], decoded[p].shape, 64, p) for p in PATHS])
    print(f"PEFT on bitsandbytes vs float64: {_rel(refq, exact):.3g} (bitsandbytes decodes these shapes "
          f"{'right' if bnb_right else 'wrongly'})")
    if bnb_right:
        assert _rel(refq, exact) <= FP32_TINY_RTOL


def test_bad_adapter_directories(rng, tmp_path):
    base = Tiny()
    layers = our_layers(base)
    for l in layers.values():
        l.add_adapter("default", r=4, lora_alpha=8)
    peftswift.save_adapter(tmp_path / "ad", layers)
    cfgp = tmp_path / "ad/adapter_config.json"
    cfg = json.loads(cfgp.read_text())
    fresh = our_layers(base)
    cfg["r"] = "four"
    cfgp.write_text(json.dumps(cfg))
    with pytest.raises(peftswift.CorruptDataError, match="adapter_config.json"):
        peftswift.load_adapter(tmp_path / "ad", fresh, "x")
    cfg["r"] = 8  # disagrees with the tensors
    cfgp.write_text(json.dumps(cfg))
    with pytest.raises(peftswift.Error):
        peftswift.load_adapter(tmp_path / "ad", fresh, "x")
    for l in fresh.values():  # nothing was partly loaded
        with pytest.raises(peftswift.NotFoundError):
            l.adapter_info("x")
    extra = dict(fresh)
    extra["model.layers.9.mlp.down_proj"] = peftswift.LoraLinear(np.eye(64, 32, dtype=np.float32))
    cfg["r"] = 4
    cfgp.write_text(json.dumps(cfg))
    with pytest.raises(peftswift.NotFoundError):
        peftswift.load_adapter(tmp_path / "ad", extra, "x")


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [False, True])
def test_bnb_checkpoints_both_ways(rng, tmp_path, qt, dq):
    from safetensors.torch import load_file as tload, save_file as tsave

    lin = torch.nn.Linear(96, 40, bias=True)
    q = bnb.nn.Linear4bit(96, 40, bias=True, quant_type=qt, compress_statistics=dq, compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type=qt, compress_statistics=dq)
    q.bias = torch.nn.Parameter(lin.bias.data.clone())
    q = q.to("cpu")
    # the arbiter: the format decoded by numpy (bitsandbytes' own dequantize_4bit is wrong for
    # these 96-element rows on AVX-512 CPUs; it is checked against the arbiter where it is right)
    ref = decode_4bit(q.weight.data, q.weight.quant_state)
    check_bnb_dequantize(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).numpy(), ref,
                         (40, 96), 64, f"{qt} dq={dq}")
    # bitsandbytes -> peftswift
    tsave({f"proj.{k}": v.contiguous() for k, v in q.state_dict().items()}, str(tmp_path / "bnb.safetensors"))
    packed, state, bias = peftswift.load_bnb_checkpoint(tmp_path / "bnb.safetensors", "proj")
    np.testing.assert_array_equal(peftswift.dequantize_4bit(packed, state), ref)
    np.testing.assert_array_equal(bias, lin.bias.detach().numpy())
    # peftswift -> bitsandbytes: the same tensors, bytes included
    peftswift.save_bnb_checkpoint(tmp_path / "ours.safetensors", {"proj": (packed, state, bias)})
    sd = tload(str(tmp_path / "ours.safetensors"))
    orig = tload(str(tmp_path / "bnb.safetensors"))
    assert sorted(sd) == sorted(orig)
    for k in sd:
        assert torch.equal(sd[k], orig[k]), k
    w = {k[len("proj.weight."):]: v for k, v in sd.items() if k.startswith("proj.weight.")}
    p4 = bnb.nn.Params4bit.from_prequantized(data=sd["proj.weight"], quantized_stats=w, device="cpu")
    np.testing.assert_array_equal(decode_4bit(p4.data, p4.quant_state), ref)
    check_bnb_dequantize(bnb.functional.dequantize_4bit(p4.data, p4.quant_state).numpy(), ref, (40, 96), 64,
                         f"{qt} dq={dq}, read back by bitsandbytes")
