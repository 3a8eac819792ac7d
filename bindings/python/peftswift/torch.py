"""peftswift.torch: PyTorch, PEFT and transformers code on the engine.

    import peftswift.torch
    model = get_peft_model(model, LoraConfig(...))
    report = peftswift.torch.convert(model)     # the one added line
    ... Trainer(model=model, ...).train()       # unchanged

`convert` walks a module tree and moves every PEFT `lora.Linear` over `nn.Linear` and every
`lora.bnb.Linear4bit` over `bitsandbytes.nn.Linear4bit` (nf4/fp4, with or without double
quantization) onto the engine. It keeps PEFT's module objects and their parameters: only the
layer's forward changes (the instance's class becomes a subclass whose forward calls the
engine), so parameter names, `nn.Parameter` semantics, `state_dict`, `save_pretrained`,
`set_adapter`, several adapters, `disable_adapter()`, `merge_and_unload`, torch optimizers,
gradient clipping, the Hugging Face `Trainer` and DDP work as before. `unconvert` restores.

What the engine computes: `peftswift::lora_linear`, a `torch.library.custom_op` (with a fake
implementation for `torch.compile` and an autograd formula), y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ
on CPU fp32 tensors, zero-copy: the engine reads x, A, B and the base weight in torch's own
storage (the base: bitsandbytes' packed 4-bit codes, absmax and nested state as `Params4bit`
holds them, or the fp32 `nn.Linear.weight`, borrowed, never copied) and writes y, and in
backward dx, d(dropout(x)), dA, dB (and db) into fresh torch tensors. Dropout runs in torch
(PEFT's own `nn.Dropout` module), so `torch.manual_seed` gives PEFT's masks. Inputs in bf16 or
fp16 are cast to fp32 at the layer's edge and the output back to the input's dtype, as
bitsandbytes and PEFT do; the engine computes in fp32.

Left in PEFT (listed in the report with the reason): DoRA and other LoRA variants, `lora_bias`,
`fan_in_fan_out`, 8-bit and other bases, non-CPU or non-fp32 dense weights, bitsandbytes layers
already repacked by their AVX512-BF16 eval path. At run time a converted layer also hands the
call to PEFT when it is given `adapter_names=` (mixed batches), is merged or has its adapters
disabled (then PEFT's forward is just the base layer's), or gets a non-CPU input.
"""
from __future__ import annotations

import copy
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import _native as _N

__all__ = ["convert", "unconvert", "ConvertReport", "lora_linear", "is_converted", "patch_bitsandbytes",
           "unpatch_bitsandbytes", "bitsandbytes_patched"]

_F32 = torch.float32

# ---------------------------------------------------------------- borrowed base weights

_TORCH_DTYPE_CODES = {torch.float32: _N.PST_DTYPE_F32, torch.float16: _N.PST_DTYPE_F16, torch.bfloat16: _N.PST_DTYPE_BF16}


class _Base:
    """The engine layer over one base module's frozen weight, borrowed from torch storage.

    Lifetime: the engine computes on the tensors' memory in place, so `self.keep` holds every
    tensor it borrows for as long as the handle lives; the handle is rebuilt whenever the module
    holds other tensors (`key` changes: a merge, `load_state_dict` into a new Params4bit, `.to`)."""

    def __init__(self, module):
        self.module = weakref.ref(module)
        self.key = None
        self.handle = None
        self.keep = ()
        self.in_features = module.in_features
        self.out_features = module.out_features

    @staticmethod
    def _key(m):
        w = m.weight
        qs = getattr(w, "quant_state", None)
        return (w.data_ptr(), tuple(w.shape), w.dtype, id(qs),
                None if qs is None else qs.absmax.data_ptr())

    def layer(self):
        m = self.module()
        if m is None:
            raise RuntimeError("peftswift.torch: the base layer of a converted module was freed")
        key = self._key(m)
        if key != self.key:
            self.handle, self.keep = None, ()
            self.handle, self.keep = _make_base(m)
            self.key = key
        return self.handle


def _bnb_state_reason(m) -> Optional[str]:
    """Why a bitsandbytes Linear4bit cannot be borrowed as it is (None: it can)."""
    w = m.weight
    qs = getattr(w, "quant_state", None)
    if qs is None:
        return "bitsandbytes Linear4bit without a quant_state (not quantized yet)"
    if getattr(qs, "packing_format_for_cpu", False):
        return "bitsandbytes repacked this weight for its AVX512-BF16 eval path (packing_format_for_cpu)"
    if qs.quant_type not in ("nf4", "fp4"):
        return f"quant_type {qs.quant_type!r}"
    if w.device.type != "cpu":
        return f"weight on {w.device}"
    if not w.data.is_contiguous():
        return "packed weight not contiguous"
    return None


def _make_base(m):
    """(capsule, tensors kept alive) for a base module: nn.Linear (fp32) or bnb Linear4bit."""
    w = m.weight
    qs = getattr(w, "quant_state", None)
    if qs is None:
        t = w.detach()
        if t.dtype != _F32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"peftswift.torch: dense base weight must be a contiguous CPU float32 tensor, got {t.dtype} on {t.device}")
        h = _N.lora_create_dense_borrowed(weight=t.data_ptr(), weight_count=t.numel(), out_features=m.out_features,
                                          in_features=m.in_features)
        return h, (t,)
    reason = _bnb_state_reason(m)
    if reason:
        raise ValueError(f"peftswift.torch: {reason}")
    packed = w.data.view(torch.uint8)  # quant_storage may be any dtype: the bytes are the codes
    shape = [int(d) for d in qs.shape]
    code = qs.code.detach().to(_F32).contiguous()
    keep = [packed, code]
    if qs.nested:
        q8 = qs.absmax.detach().contiguous()
        na = qs.state2.absmax.detach().to(_F32).contiguous()
        nc = qs.state2.code.detach().to(_F32).contiguous()
        keep += [q8, na, nc]
        offset = float(qs.offset.item() if torch.is_tensor(qs.offset) else qs.offset)
        cap = _N.quant_borrow_state(packed=packed.data_ptr(), packed_bytes=packed.numel(), absmax=q8.data_ptr(),
                                    absmax_count=q8.numel(), code=code.data_ptr(), nested=True, nested_absmax=na.data_ptr(),
                                    nested_absmax_count=na.numel(), nested_code=nc.data_ptr(), offset=offset, shape=shape,
                                    dtype=_TORCH_DTYPE_CODES.get(qs.dtype, _N.PST_DTYPE_F32),
                                    quant_type=_N.PST_QUANT_NF4 if qs.quant_type == "nf4" else _N.PST_QUANT_FP4,
                                    blocksize=int(qs.blocksize), nested_blocksize=int(qs.state2.blocksize))
    else:
        a = qs.absmax.detach().to(_F32).contiguous()
        keep += [a]
        cap = _N.quant_borrow_state(packed=packed.data_ptr(), packed_bytes=packed.numel(), absmax=a.data_ptr(),
                                    absmax_count=a.numel(), code=code.data_ptr(), nested=False, nested_absmax=0,
                                    nested_absmax_count=0, nested_code=0, offset=0.0, shape=shape,
                                    dtype=_TORCH_DTYPE_CODES.get(qs.dtype, _N.PST_DTYPE_F32),
                                    quant_type=_N.PST_QUANT_NF4 if qs.quant_type == "nf4" else _N.PST_QUANT_FP4,
                                    blocksize=int(qs.blocksize), nested_blocksize=256)
    keep.append(cap)
    h = _N.lora_create_quantized(base=cap, bias=None)
    return h, tuple(keep)


# Registry of bases by integer id: the op takes the id (custom ops take tensors and scalars).
_BASES: dict[int, _Base] = {}
_IDS = itertools.count(1)


def _register_base(module) -> int:
    i = next(_IDS)
    _BASES[i] = _Base(module)
    # the entry (and the tensors it keeps alive) goes when the module does
    weakref.finalize(module, _BASES.pop, i, None)
    return i


def _base(i: int) -> _Base:
    try:
        return _BASES[i]
    except KeyError:
        raise RuntimeError(f"peftswift.torch: base {i} is not registered (unconverted?)") from None


# ---------------------------------------------------------------- the op

def _ptr(t: Optional[torch.Tensor]) -> int:
    if t is None:
        return 0
    if t.dtype != _F32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"peftswift::lora_linear takes contiguous CPU float32 tensors, got {t.dtype} on {t.device}"
                         f"{'' if t.is_contiguous() else ' (not contiguous)'}")
    return t.data_ptr()


@torch.library.custom_op("peftswift::lora_linear", mutates_args=())
def _lora_linear(x: torch.Tensor, x_lora: Optional[torch.Tensor], lora_a: Optional[torch.Tensor],
                 lora_b: Optional[torch.Tensor], bias: Optional[torch.Tensor], scaling: float, base: int,
                 out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = _base(base)
    m = x.shape[0]
    r = 0 if lora_a is None else lora_a.shape[0]
    y = torch.empty((m, out_features), dtype=_F32)
    t = torch.empty((m, r), dtype=_F32)
    if m == 0:
        return y, t
    _N.lora_apply(layer=b.layer(), m=m, x=_ptr(x), x_lora=_ptr(x_lora), lora_a=_ptr(lora_a), lora_b=_ptr(lora_b), r=r,
                  scaling=float(scaling), bias=_ptr(bias), y=y.data_ptr(), y_capacity=y.numel(),
                  t=t.data_ptr() if r else 0)
    return y, t


@_lora_linear.register_fake
def _(x, x_lora, lora_a, lora_b, bias, scaling, base, out_features):
    r = 0 if lora_a is None else lora_a.shape[0]
    return x.new_empty((x.shape[0], out_features)), x.new_empty((x.shape[0], r))


@torch.library.custom_op("peftswift::lora_linear_backward", mutates_args=())
def _lora_linear_backward(dy: torch.Tensor, x_branch: Optional[torch.Tensor], lora_a: Optional[torch.Tensor],
                          lora_b: Optional[torch.Tensor], t: Optional[torch.Tensor], scaling: float, base: int,
                          in_features: int, x_lora_given: bool, need_dx: bool, need_dx_lora: bool, need_a: bool,
                          need_b: bool, need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b = _base(base)
    m, out_f = dy.shape
    r = 0 if lora_a is None else lora_a.shape[0]
    def out(need, *shape):  # an output not asked for is an empty tensor of its own
        return torch.empty(shape if need else (0,), dtype=_F32)
    dx, dxl = out(need_dx, m, in_features), out(need_dx_lora, m, in_features)
    da, db, dbias = out(need_a, r, in_features), out(need_b, out_f, r), out(need_bias, out_f)
    if m == 0:
        for g in (dx, dxl, da, db, dbias):
            g.zero_()
        return dx, dxl, da, db, dbias
    xb = _ptr(x_branch)
    _N.lora_apply_backward(layer=b.layer(), m=m, x=0 if x_lora_given else xb, x_lora=xb if x_lora_given else 0,
                           lora_a=_ptr(lora_a), lora_b=_ptr(lora_b), r=r, scaling=float(scaling), dy=_ptr(dy),
                           dy_count=dy.numel(), t=_ptr(t) if (t is not None and t.numel()) else 0,
                           dx=dx.data_ptr() if need_dx else 0, dx_lora=dxl.data_ptr() if need_dx_lora else 0,
                           grad_a=da.data_ptr() if need_a else 0, grad_b=db.data_ptr() if need_b else 0,
                           grad_bias=dbias.data_ptr() if need_bias else 0)
    return dx, dxl, da, db, dbias


@_lora_linear_backward.register_fake
def _(dy, x_branch, lora_a, lora_b, t, scaling, base, in_features, x_lora_given, need_dx, need_dx_lora, need_a,
      need_b, need_bias):
    m, out_f = dy.shape
    r = 0 if lora_a is None else lora_a.shape[0]

    def out(need, *shape):
        return dy.new_empty(shape if need else (0,))
    return (out(need_dx, m, in_features), out(need_dx_lora, m, in_features), out(need_a, r, in_features),
            out(need_b, out_f, r), out(need_bias, out_f))


def _setup_context(ctx, inputs, output):
    x, x_lora, lora_a, lora_b, bias, scaling, base, out_features = inputs
    _, t = output
    ctx.scaling, ctx.base = scaling, base
    ctx.in_features = x.shape[1]
    ctx.x_lora_given = x_lora is not None
    ctx.has_branch = lora_a is not None
    ctx.has_bias = bias is not None
    # backward is given the branch's input (x_lora, or x), A, B and t; x itself is not needed
    x_branch = (x_lora if x_lora is not None else x) if lora_a is not None else None
    ctx.save_for_backward(x_branch, lora_a, lora_b, t)


def _backward(ctx, dy, dt):
    x_branch, lora_a, lora_b, t = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_dx, need_dxl = bool(n[0]), bool(n[1]) and ctx.x_lora_given
    need_a, need_b = bool(n[2]) and ctx.has_branch, bool(n[3]) and ctx.has_branch
    need_bias = bool(n[4]) and ctx.has_bias
    if not (need_dx or need_dxl or need_a or need_b or need_bias):
        return None, None, None, None, None, None, None, None
    dx, dxl, da, db, dbias = _lora_linear_backward(dy.contiguous().to(_F32), x_branch, lora_a, lora_b, t, ctx.scaling,
                                                   ctx.base, ctx.in_features, ctx.x_lora_given, need_dx, need_dxl,
                                                   need_a, need_b, need_bias)
    return (dx if need_dx else None, dxl if need_dxl else None, da if need_a else None, db if need_b else None,
            dbias if need_bias else None, None, None, None)


_lora_linear.register_autograd(_backward, setup_context=_setup_context)


def lora_linear(x, x_lora, lora_a, lora_b, bias, scaling, base_module):
    """y = x·Wᵀ + bias + scaling·(x_lora·Aᵀ)·Bᵀ on the engine, differentiable in x, x_lora, A, B
    and bias (W is `base_module`'s frozen weight: an fp32 `nn.Linear` or a bitsandbytes
    `Linear4bit`, borrowed). x, x_lora: (..., in); x_lora None means x; lora_a/lora_b None: base
    only. Any float dtype in, computed in fp32, returned in x's dtype."""
    bid = getattr(base_module, "_pst_base_id", None)
    if bid is None:
        bid = _register_base(base_module)
        base_module._pst_base_id = bid
    return _call(x, x_lora, lora_a, lora_b, bias, scaling, bid, base_module.in_features, base_module.out_features)


def _f32(t):
    return None if t is None else t.to(_F32).contiguous()


def _call(x, x_lora, lora_a, lora_b, bias, scaling, bid, in_f, out_f):
    lead = x.shape[:-1]
    x2 = _f32(x.reshape(-1, in_f))
    xl2 = None if x_lora is None else _f32(x_lora.reshape(-1, in_f))
    y, _ = _lora_linear(x2, xl2, _f32(lora_a), _f32(lora_b), _f32(bias), float(scaling), bid, out_f)
    return y.reshape(*lead, out_f).to(x.dtype)


# ---------------------------------------------------------------- converting PEFT layers

def _peft_classes():
    from peft.tuners.lora import layer as L

    out = {"linear": L.Linear, "layer": L.LoraLayer}
    try:
        from peft.tuners.lora import bnb as LB

        out["bnb4"] = getattr(LB, "Linear4bit", None)
        out["bnb8"] = getattr(LB, "Linear8bitLt", None)
    except ImportError:
        pass
    return out


def _bnb_linear4bit():
    try:
        import bitsandbytes as bnb

        return bnb.nn.Linear4bit
    except ImportError:
        return None


def _reason(mod, classes) -> Optional[str]:
    """Why `mod` (a PEFT LoRA layer) stays in PEFT, or None when it can move."""
    lin, bnb4 = classes.get("linear"), classes.get("bnb4")
    if bnb4 is not None and type(mod) is bnb4:
        kind = "bnb4"
    elif type(mod) is lin:
        kind = "linear"
    elif classes.get("bnb8") is not None and type(mod) is classes["bnb8"]:
        return "8-bit base (bitsandbytes Linear8bitLt)"
    else:
        return f"{type(mod).__module__}.{type(mod).__name__} is not a LoRA Linear over nn.Linear or Linear4bit"
    if any(mod.use_dora.values()) or getattr(mod, "lora_variant", {}):
        return "DoRA or another LoRA variant (lora_variant)"
    if any(getattr(mod, "lora_bias", {}).values()):
        return "lora_bias"
    if getattr(mod, "fan_in_fan_out", False):
        return "fan_in_fan_out"
    base = mod.get_base_layer()
    L4 = _bnb_linear4bit()
    if kind == "bnb4" or (L4 is not None and isinstance(base, L4)):  # (PEFT also wraps Linear4bit in lora.Linear)
        if L4 is None or not isinstance(base, L4):
            return f"base layer {type(base).__name__} is not bitsandbytes Linear4bit"
        r = _bnb_state_reason(base)
        if r:
            return r
    else:
        if type(base) is not torch.nn.Linear:
            return f"base layer {type(base).__name__} is not torch.nn.Linear"
        w = base.weight
        if w.device.type != "cpu":
            return f"base weight on {w.device}"
        if w.dtype != _F32:
            return f"dense base weight is {w.dtype} (an fp32 copy would double it; the engine borrows fp32 weights only)"
        if not w.is_contiguous():
            return "base weight not contiguous"
    for name in mod.lora_A:
        if mod.lora_A[name].weight.device.type != "cpu":
            return "adapter weights not on CPU"
    return None


_ENGINE_CLASSES: dict[type, type] = {}


def _engine_class(cls):
    """The subclass of a PEFT layer class whose forward runs on the engine (one per class)."""
    sub = _ENGINE_CLASSES.get(cls)
    if sub is None:
        sub = type(cls.__name__, (_EngineForward, cls), {"_pst_peft_class": cls, "__module__": cls.__module__,
                                                           "__qualname__": cls.__qualname__})
        _ENGINE_CLASSES[cls] = sub
    return sub


class _EngineForward:
    """Mixed in front of PEFT's layer class by `convert`: forward on the engine, everything else
    (parameters, adapters, merge, state dict) PEFT's."""

    def forward(self, x, *args, **kwargs):
        peft_forward = self._pst_peft_class.forward
        if (args or kwargs or self.disable_adapters or self.merged or x.device.type != "cpu"
                or getattr(self, "lora_variant", None) or not x.is_floating_point()):
            return peft_forward(self, x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.lora_A]
        base = self.get_base_layer()
        if base.bias is not None and base.bias.device.type != "cpu":
            return peft_forward(self, x, *args, **kwargs)
        if not active:
            return _call(x, None, None, None, base.bias, 1.0, self._pst_base_id, self.in_features, self.out_features)
        first = active[0]
        lora_A, lora_B = self.lora_A[first].weight, self.lora_B[first].weight
        # PEFT: x cast to lora_A's dtype, then dropout (same RNG draws, in the same order)
        xa = x.to(lora_A.dtype)
        xd = self.lora_dropout[first](xa)
        y = _call(x, None if xd is xa else xd, lora_A, lora_B, base.bias, self.scaling[first], self._pst_base_id,
                  self.in_features, self.out_features)
        for a in active[1:]:  # further active adapters: PEFT's own arithmetic
            A, B = self.lora_A[a], self.lora_B[a]
            xa = x.to(A.weight.dtype)
            y = y + (B(A(self.lora_dropout[a](xa))) * self.scaling[a]).to(y.dtype)
        return y

    def __deepcopy__(self, memo):
        # a copy computes on its own base weight: it gets its own registration
        cls = self.__class__
        self.__class__ = self._pst_peft_class
        try:
            new = copy.deepcopy(self, memo)
        finally:
            self.__class__ = cls
        new._pst_base_id = _register_base(new.get_base_layer())
        new.__class__ = cls
        return new

    def __reduce_ex__(self, protocol):
        # pickled (torch.save of a whole model) as PEFT's own layer: convert again after loading
        cls = self.__class__
        self.__class__ = self._pst_peft_class
        try:
            fn, args, state, *rest = super().__reduce_ex__(protocol)
        finally:
            self.__class__ = cls
        state = dict(state)
        state.pop("_pst_base_id", None)
        return (fn, args, state, *rest)


@dataclass
class ConvertReport:
    """What `convert` did: `converted` names the modules now on the engine, `left` maps the
    LoRA modules that stay in PEFT to the reason."""
    converted: list = field(default_factory=list)
    left: dict = field(default_factory=dict)

    def __str__(self):
        lines = [f"peftswift.torch.convert: {len(self.converted)} LoRA layers on the engine, {len(self.left)} left in PEFT"]
        lines += [f"  left {name}: {why}" for name, why in self.left.items()]
        return "\n".join(lines)


def is_converted(module) -> bool:
    return isinstance(module, _EngineForward)


def convert(model: torch.nn.Module) -> ConvertReport:
    """Moves every PEFT LoRA Linear layer of `model` that the engine supports onto it, in place
    (see the module docstring); returns the report. Converting twice is harmless."""
    classes = _peft_classes()
    layer_cls = classes["layer"]
    rep = ConvertReport()
    for name, mod in model.named_modules():
        if not isinstance(mod, layer_cls):
            continue
        if is_converted(mod):
            rep.converted.append(name)
            continue
        why = _reason(mod, classes)
        if why is not None:
            rep.left[name] = why
            continue
        mod._pst_base_id = _register_base(mod.get_base_layer())
        _BASES[mod._pst_base_id].layer()  # borrow now: a bad state fails here, not in a step
        mod.__class__ = _engine_class(type(mod))
        rep.converted.append(name)
    return rep


def unconvert(model: torch.nn.Module) -> int:
    """Gives every converted layer of `model` its PEFT class back and releases the engine's
    handles on their base weights. Returns the number of layers restored."""
    n = 0
    for mod in model.modules():
        if is_converted(mod):
            mod.__class__ = mod._pst_peft_class
            bid = mod.__dict__.pop("_pst_base_id", None)
            if bid is not None:
                _BASES.pop(bid, None)
            n += 1
    return n


# ---------------------------------------------------------------- bitsandbytes' own ops on the engine

_PATCH_LIB = None
_FLOAT_CODES = {torch.float32: _N.PST_DTYPE_F32, torch.float16: _N.PST_DTYPE_F16, torch.bfloat16: _N.PST_DTYPE_BF16}
_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_CODEBOOKS: dict = {}
_GEMM_ENGINE_MAX_ROWS = 16


def _np(t):
    """A numpy view of a contiguous CPU tensor's bytes (bf16 as int16: the engine takes a dtype code)."""
    t = t.detach()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _bnb_default(name, *args):
    """bitsandbytes' own device-independent kernel of an op (what runs where peftswift does not)."""
    op = getattr(torch.ops.bitsandbytes, name)
    op = op.default if hasattr(op, "default") else op
    ks = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(ks, *args)


def _codebook(quant_type):
    c = _CODEBOOKS.get(quant_type)
    if c is None:
        from . import quant

        c = torch.from_numpy(quant.codebook(quant_type).astype("float32").copy())
        _CODEBOOKS[quant_type] = c
    return c


def _bnb_quantize_4bit(A, blocksize, quant_type, quant_storage):
    n = A.numel()
    nbytes = (n + 1) // 2
    if (A.dtype not in _FLOAT_CODES or n == 0 or blocksize not in _BLOCKSIZES or quant_type not in ("nf4", "fp4")
            or nbytes % quant_storage.itemsize):
        return _bnb_default("quantize_4bit", A, blocksize, quant_type, quant_storage)
    a = A.detach().contiguous()
    packed = torch.empty((nbytes,), dtype=torch.uint8)
    absmax = torch.empty((-(n // -blocksize),), dtype=torch.float32)
    try:
        _N.quantize_4bit(x=_np(a).reshape(-1), dtype=_FLOAT_CODES[a.dtype], n=n, blocksize=blocksize,
                         quant_type=_N.PST_QUANT_NF4 if quant_type == "nf4" else _N.PST_QUANT_FP4,
                         packed=packed.numpy(), absmax=absmax.numpy())
    except _N.NonFiniteError:  # NaN / Inf: bitsandbytes' own arithmetic decides what they become
        return _bnb_default("quantize_4bit", A, blocksize, quant_type, quant_storage)
    if quant_storage != torch.uint8:
        packed = packed.view(quant_storage)
    return packed.unsqueeze(1), absmax


def _dequantize_into(A, absmax, blocksize, quant_type, shape, dtype, out):
    """Decodes into `out` (contiguous, `dtype`); False where the engine does not apply."""
    n = 1
    for d in shape:
        n *= int(d)
    if (dtype not in _FLOAT_CODES or absmax.dtype != torch.float32 or blocksize not in _BLOCKSIZES or n == 0
            or quant_type not in ("nf4", "fp4") or not out.is_contiguous()):
        return False
    p = A.detach().contiguous().view(torch.uint8).reshape(-1)
    if p.numel() < (n + 1) // 2 or absmax.numel() < -(n // -blocksize):
        return False
    _N.dequantize_4bit(packed=p.numpy(), absmax=absmax.detach().contiguous().numpy(), code=None,
                       quant_type=_N.PST_QUANT_NF4 if quant_type == "nf4" else _N.PST_QUANT_FP4, n=n,
                       blocksize=blocksize, out=_np(out).reshape(-1), out_dtype=_FLOAT_CODES[dtype])
    return True


def _bnb_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    out = torch.empty(list(shape), dtype=dtype)
    if _dequantize_into(A, absmax, blocksize, quant_type, shape, dtype, out):
        return out
    return _bnb_default("dequantize_4bit", A, absmax, blocksize, quant_type, shape, dtype)


def _bnb_dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    if not _dequantize_into(A, absmax, blocksize, quant_type, shape, dtype, out):
        out.copy_(_bnb_default("dequantize_4bit", A, absmax, blocksize, quant_type, shape, dtype))


def _bnb_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
                   absmax_offset=None):
    args = (A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset)
    # Rows of A at or below which the engine computes: bitsandbytes dequantizes all of W per
    # call, which dominates at few rows (bench/bench_torch.py, 2048 x 2048, newest peers on an
    # AVX-512 host: M = 1 1.9x faster on the engine), while at many rows PyTorch's AVX-512 GEMM
    # beats the engine's AVX2 one (M = 512: 2x slower). The crossover between is not measured yet.
    if A.numel() // max(A.shape[-1], 1) > _GEMM_ENGINE_MAX_ROWS:
        return _bnb_default("gemm_4bit", *args)
    if (len(shapeB) != 2 or A.shape[-1] != shapeB[1] or A.numel() == 0 or A.dtype not in _FLOAT_CODES
            or blocksize not in _BLOCKSIZES or quant_type not in ("nf4", "fp4") or absmax.dtype != torch.float32):
        return _bnb_default("gemm_4bit", *args)
    N, K = int(shapeB[0]), int(shapeB[1])
    packed = B.detach().contiguous().view(torch.uint8).reshape(-1)
    if packed.numel() != (N * K + 1) // 2:
        return _bnb_default("gemm_4bit", *args)
    code = _codebook(quant_type)
    qt = _N.PST_QUANT_NF4 if quant_type == "nf4" else _N.PST_QUANT_FP4
    am = absmax.detach().contiguous()
    try:
        if absmax_8bit is not None:
            q8 = absmax_8bit.detach().contiguous().view(torch.uint8)
            nc = absmax_code.detach().to(torch.float32).contiguous()
            off = float(absmax_offset.item() if torch.is_tensor(absmax_offset) else absmax_offset)
            cap = _N.quant_borrow_state(packed=packed.data_ptr(), packed_bytes=packed.numel(), absmax=q8.data_ptr(),
                                        absmax_count=q8.numel(), code=code.data_ptr(), nested=True,
                                        nested_absmax=am.data_ptr(), nested_absmax_count=am.numel(),
                                        nested_code=nc.data_ptr(), offset=off, shape=[N, K], dtype=_N.PST_DTYPE_F32,
                                        quant_type=qt, blocksize=blocksize, nested_blocksize=256)
        else:
            cap = _N.quant_borrow_state(packed=packed.data_ptr(), packed_bytes=packed.numel(), absmax=am.data_ptr(),
                                        absmax_count=am.numel(), code=code.data_ptr(), nested=False, nested_absmax=0,
                                        nested_absmax_count=0, nested_code=0, offset=0.0, shape=[N, K],
                                        dtype=_N.PST_DTYPE_F32, quant_type=qt, blocksize=blocksize, nested_blocksize=256)
        layer = _N.lora_create_quantized(base=cap, bias=None)
    except (_N.ShapeError, _N.InvalidArgumentError, _N.NonFiniteError):
        return _bnb_default("gemm_4bit", *args)
    x = A.detach().reshape(-1, K).to(torch.float32).contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    y = torch.empty((x.shape[0], N), dtype=torch.float32)
    _N.lora_apply(layer=layer, m=x.shape[0], x=x.data_ptr(), x_lora=0, lora_a=0, lora_b=0, r=0, scaling=1.0,
                  bias=0 if b is None else b.data_ptr(), y=y.data_ptr(), y_capacity=y.numel(), t=0)
    return y.reshape(*A.shape[:-1], N).to(A.dtype)


def patch_bitsandbytes() -> None:
    """Makes the engine the CPU kernel of bitsandbytes' own torch ops (opt-in; undo with
    `unpatch_bitsandbytes`): `bitsandbytes::quantize_4bit` (bit-identical codes and absmax: what
    `from_pretrained(..., BitsAndBytesConfig(load_in_4bit=True), device_map="cpu")` and
    `Params4bit` quantize with), `dequantize_4bit` (+ `.out`) and `gemm_4bit` (the 4-bit matmul
    of `Linear4bit`, on the packed codes without dequantizing W; for inputs of at most 16 rows,
    where that is faster than bitsandbytes' dequantize-then-F.linear). Where the engine does not
    apply (other dtypes, blocksizes or quant types, NaN/Inf input, a quant_storage the byte
    count does not divide) the call goes to bitsandbytes' device-independent kernel.
    `gemv_4bit` stays bitsandbytes' (on CPU it serves the AVX512-BF16 repacked layout)."""
    global _PATCH_LIB
    if _PATCH_LIB is not None:
        return
    import warnings

    import bitsandbytes  # noqa: F401  (defines the ops)

    lib = torch.library.Library("bitsandbytes", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
        lib.impl("quantize_4bit", _bnb_quantize_4bit, "CPU")
        lib.impl("dequantize_4bit", _bnb_dequantize_4bit, "CPU")
        lib.impl("dequantize_4bit.out", _bnb_dequantize_4bit_out, "CPU")
        lib.impl("gemm_4bit", _bnb_gemm_4bit, "CPU")
    _PATCH_LIB = lib


def unpatch_bitsandbytes() -> None:
    """Gives bitsandbytes its own kernels back (a no-op when not patched)."""
    global _PATCH_LIB
    if _PATCH_LIB is not None:
        _PATCH_LIB._destroy()
        _PATCH_LIB = None


def bitsandbytes_patched() -> bool:
    return _PATCH_LIB is not None
