"""peftswift: QLoRA building blocks from a Swift engine (libpeftswift.so).

NF4/FP4 4-bit and 8-bit blockwise quantization bit-exact with bitsandbytes, double
quantization, LoRA/QLoRA layers, paged optimizers. numpy arrays in and out without copies;
PyTorch tensors are accepted where arrays are.

Threads and the GIL
-------------------
Every call that can run long releases the GIL while the engine works (its own threads, see
set_num_threads, do the arithmetic), so other Python threads keep running:

- quantization: quantize_4bit (with its double quantization), dequantize_4bit,
  quantize_blockwise, dequantize_blockwise;
- LoRA layers: LoraLinear(weight) and LoraLinear.quantized (the engine copies the base),
  add_adapter, forward / __call__, backward, zero_grad, merge, unmerge, base_weight;
- optimizers and paging: AdamW.add_param (and so AdamW(...)), step, zero_grad, clip_grad_norm,
  state_dict, load_state_dict; Pager(...), setting Pager.budget, Pager.alloc,
  PagedBuffer.acquire / pinned (each may write pages to, or read them from, the spill file);
- files: save_file, load_file, load_metadata and SafeTensors(path) (opening and mapping),
  save_adapter, load_adapter, save_bnb_checkpoint, load_bnb_checkpoint;
- peftswift.torch: convert (it borrows each base weight, checking it once), and every forward
  and backward of a converted layer (the peftswift::lora_linear op);
- language models (peftswift.llm): Model.load, tokenize, detokenize, chat_prompt, logits,
  loss, backward, zero_grad, add_adapter, delete_adapter, set_adapter, save_adapter,
  load_adapter, generate; Trainer(...), step, train, save_adapter, save_checkpoint;
  latest_checkpoint.

Cheap accessors keep it: version, status_string, set_num_threads, get_num_threads, codebook,
lr_multiplier; on a LoraLinear the adapter views (lora_A, lora_B, grad_A, grad_B, bias,
grad_bias, parameters), adapter_info, delete_adapter, set_adapter, disable_adapters,
train / eval; AdamW.set_lr; Pager.stats / budget; PagedBuffer.release, prefetch (it starts a
background read and returns); SafeTensors.keys, metadata, get_tensor (views of the mapping);
Model.info, modules, adapter_modules, lora_A and the other views, train / eval; Trainer.info,
completed_steps.

Callbacks (generate's on_token, Trainer.train's callback) run on the calling thread with the
GIL taken back for as long as each runs; returning False stops the run, and an exception
raised in one stops it and propagates from generate / train.

Because the GIL is released, two threads can be inside the engine at once. Calls on different
objects may run concurrently; one object must not be used from two threads at a time (the C
library's rule: calls on one handle are serialized by the caller). A Model and its Trainers
refuse a second call while one runs, from another thread or from inside their own callback,
with MisuseError ("the model handle is in use"); the other objects do not check, so guard one
that threads share with a lock.
"""
from . import _native
from ._native import (  # noqa: F401  (the error hierarchy lives in the C layer)
    CorruptDataError,
    Error,
    ExistsError,
    IOError,
    InternalError,
    InvalidArgumentError,
    MisuseError,
    NonFiniteError,
    NotFoundError,
    OutOfMemoryError,
    ShapeError,
    UnsupportedCPUError,
    UnsupportedError,
)
from . import files  # noqa: F401
from . import llm  # noqa: F401
from .files import load_adapter, load_bnb_checkpoint, save_adapter, save_bnb_checkpoint  # noqa: F401
from .lora import LoraLinear  # noqa: F401
from .optim import AdamW, PagedBuffer, Pager, lr_multiplier  # noqa: F401
from .quant import (  # noqa: F401
    QuantState,
    codebook,
    dequantize_4bit,
    dequantize_blockwise,
    quantize_4bit,
    quantize_blockwise,
)

__version__ = _native.version()
ABI_VERSION = _native.abi_version()


def set_num_threads(n: int) -> None:
    """Threads the kernels use (default: all online CPUs)."""
    _native.set_num_threads(n=int(n))


def get_num_threads() -> int:
    return _native.get_num_threads()


_ISA_NAMES = {0: "avx2", 1: "avx512", 2: "avx512bf16"}


def set_isa(name: str) -> None:
    """Uses the kernel path ``name`` ("avx2", "avx512" or "avx512bf16") from the next call on,
    process-wide (pst_set_isa). The library starts on the best path the CPU has, capped by the
    environment variable PST_ISA. fp32 results are bit-identical on every path. A path the CPU
    lacks raises UnsupportedCPUError naming the missing features."""
    codes = {v: k for k, v in _ISA_NAMES.items()}
    key = str(name).lower().replace("_", "")
    if key not in codes:
        raise ValueError(f"isa {name!r} must be one of {sorted(codes)}")
    _native.set_isa(isa=codes[key])


def get_isa() -> str:
    """The kernel path in use: "avx2", "avx512" or "avx512bf16"."""
    return _ISA_NAMES[_native.get_isa()]


def host_isa() -> str:
    """The best kernel path this CPU has, whatever PST_ISA says."""
    return _ISA_NAMES[_native.host_isa()]


def status_string(status: int) -> str:
    return _native.status_string(status=int(status))
