"""Read NVlabs stylegan2-ada-pytorch network pickles without NVlabs' code and without running the pickle.

A ``network-snapshot-*.pkl`` is ``pickle.dump(dict(training_set_kwargs, G, D, G_ema, augment_pipe))`` of
``torch_utils.persistence`` objects. Each of them pickles as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` is
``{type: 'class', version: 6, module_src: <the whole networks.py>, class_name, state: obj.__dict__}``;
NVlabs' loader ``exec``s ``module_src``. Here nothing from the file is ever run or imported:

* ``NetworkUnpickler.find_class`` resolves only the few globals such a file needs (below) to functions of
  ours, from tables made when this module is imported (a global never imports a module), and refuses any
  other global with an error that names the file and the global; protocol-2 pickles' Python 2 names
  (``__builtin__``, ``copy_reg``) are mapped to Python 3's first, and their bytes (``_codecs.encode``) read;
* a persistent object becomes an inert :class:`PersistentRecord` (class name + state); ``module_src`` is kept
  only as a SHA-256;
* tensor storages, pickled by torch as bytes in its legacy format, are read by
  ``torch.load(weights_only=True)``, and a tensor is a view that must lie inside its storage.

Before that, :func:`identify_file` tells the file's type by its first bytes, whatever its suffix: a torch.save
checkpoint or a PNG, gzip, zip, ... is named in the error instead of failing as a corrupt pickle (and
:mod:`lagm_ray.synthetic` sends torch checkpoints to ``torch.load(weights_only=True)``, with its errors rephrased
by :func:`torch_load_error`: torch's advice to load with ``weights_only=False`` is never passed on).

:func:`import_generator` then checks ``G_ema``'s init arguments (types, ranges, and the size of the generator
they describe, at most ``MAX_GENERATOR_BYTES``) before anything is built, rebuilds our
:class:`~lagm_ray.models.generator.Generator` from them and loads the parameters and buffers found by walking
the records' ``_modules`` / ``_parameters`` / ``_buffers``, with strict key and shape matching.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError
from ..storage import sha256_file
from .generator import Generator

try:  # numpy >= 2 pickles scalars as numpy._core.multiarray.scalar, numpy 1 as numpy.core.multiarray.scalar
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import scalar as _np_scalar


class UnsafePickleError(CheckpointError):
    """The pickle asks for a global outside the whitelist; nothing from it has been run."""


class EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access) as a plain dict."""


@dataclass(frozen=True)
class PersistentRecord:
    """An NVlabs persistent object, unpickled as data: its class name and its ``__dict__``."""

    class_name: str
    state: dict[str, Any]
    version: int
    module_src_sha256: str  # identifies the pickled source code, which is never executed

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return dict(self.state.get("_init_kwargs") or {})


# ------------------------------------------------------------------------------ file types

# What a file that is not a pickle is, by its first bytes, for a message that names it.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip-compressed file"), (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"), (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"PK\x05\x06", "an empty zip archive"),
)
# torch.save's legacy (non-zip) format starts with a pickle of this magic number, in the protocol it was saved with.
_TORCH_LEGACY_HEADERS = tuple(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=p) for p in range(2, 6))


@dataclass(frozen=True)
class FileType:
    kind: str  # "pickle" (including protocol 0/1 text and anything unrecognised), "torch", "empty" or "other"
    description: str  # "a PNG image", "a torch checkpoint (torch.save, zip format)", ...


def identify_file(path: str | Path) -> FileType:
    """What a file is, by its content, whatever its suffix: a torch.save checkpoint (zip or legacy format), a
    known non-pickle type, or else (possibly) a pickle. Reads 512 bytes, and a zip archive's directory."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return FileType("empty", "an empty file")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            return FileType("other", f"a damaged zip archive ({e})")
        top = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in top or any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return FileType("other", "a TorchScript archive (torch.jit.save: code, not only weights)")
        if "data.pkl" in top:
            return FileType("torch", "a torch checkpoint (torch.save, zip format)")
        return FileType("other", "a zip archive without a torch checkpoint's data.pkl (a dataset, an .npz, ...)")
    if head.startswith(_TORCH_LEGACY_HEADERS):
        return FileType("torch", "a torch checkpoint (torch.save, legacy format)")
    for signature, description in _SIGNATURES:
        if head.startswith(signature):
            return FileType("other", description)
    if head[257:262] == b"ustar":
        return FileType("other", "a tar archive")
    return FileType("pickle", "a pickle")


def torch_load_error(where: str | Path, e: BaseException) -> CheckpointError:
    """``torch.load(weights_only=True)``'s error, rephrased: torch's message advises loading again with
    ``weights_only=False`` (which runs the file's code) or allow-listing the global, advice lagm_ray never gives."""
    message = str(e)
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", message)
    if found:
        return UnsafePickleError(f"{where}: refused global {found.group(1)}: not one a weights-only checkpoint may "
                                 "hold, and lagm_ray never runs code from a checkpoint")
    if "WeightsUnpickler error:" in message:
        message = message.rsplit("WeightsUnpickler error:", 1)[1]
    elif "Weights only load failed" in message:
        message = message.split("\n\n", 1)[1] if "\n\n" in message else ""
    reason = next((line.strip() for line in message.splitlines() if line.strip()), "")
    if not reason or re.search(r"weights.only|add_safe_globals|safe_globals", reason, re.IGNORECASE):
        reason = "weights-only loading refused it"
    return CheckpointError(f"{where}: cannot read it as a torch checkpoint: {type(e).__name__}: {reason[:300]}")


# ------------------------------------------------------------------------ restricted unpickling


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Our replacement for NVlabs' function of that name: records ``meta`` instead of exec'ing its source."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"malformed persistent object record: {type(meta).__name__}")
    if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise CheckpointError(f"unsupported persistent object type {meta.get('type')!r}")
    src = meta.get("module_src")
    src_hash = hashlib.sha256(src.encode()).hexdigest() if isinstance(src, str) else ""
    return PersistentRecord(class_name=meta["class_name"], state=dict(meta["state"]),
                            version=int(meta.get("version") or 0), module_src_sha256=src_hash)


def _load_storage(data: Any) -> Any:
    """``torch.storage._load_from_bytes``: torch pickles a storage as ``torch.save`` bytes; read them with
    ``weights_only=True`` (torch's own restricted unpickler) instead of torch's ``weights_only=False``."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"tensor storage is {type(data).__name__}, not bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:
        raise torch_load_error("tensor storage", e) from None  # torch's message advises weights_only=False
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"tensor storage bytes hold a {type(storage).__name__}")
    return storage


_MAX_TENSOR_DIMS = 32


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_view(storage_offset: Any, size: Any, stride: Any, storage_numel: int) -> None:
    """A tensor view must lie inside its storage: ``Tensor.set_`` (which torch's own rebuild calls) grows a
    storage that is too small, so a view past its end would come back padded with uninitialised memory
    (or allocate as much as its size asks). Refuses negative or non-integer offsets, sizes and strides."""
    geometry = f"size {_shown(size)}, stride {_shown(stride)}, offset {_shown(storage_offset)}"
    if (not _is_int(storage_offset) or not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list))
            or not all(map(_is_int, size)) or not all(map(_is_int, stride))):
        raise CheckpointError(f"tensor view with {geometry}: offset, sizes and strides must be integers")
    if len(size) != len(stride) or len(size) > _MAX_TENSOR_DIMS:
        raise CheckpointError(f"tensor view with {geometry}: sizes and strides must be as many, at most "
                              f"{_MAX_TENSOR_DIMS}")
    if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise CheckpointError(f"tensor view with {geometry}: negative offset, size or stride")
    # Elements the view reaches: up to its last element's index + 1, or its offset when it is empty.
    end = storage_offset if 0 in size else storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if end > storage_numel:
        raise CheckpointError(f"tensor view with {geometry} reaches element {end} of a storage of "
                              f"{storage_numel} elements (a view must lie inside its storage)")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for views inside their storage, without its backward-hook and
    metadata handling (never needed for weights; hooks are not data)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor built on a {type(storage).__name__}, not a storage")
    # elements in the storage (TypedStorage.size() says the same, with a deprecation warning)
    _check_view(storage_offset, size, stride, storage._untyped_storage.nbytes() // storage.dtype.itemsize)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the parameter's data is all we load."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter built on a {type(data).__name__}, not a tensor")
    return data


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """NVlabs modules keep numpy floats (e.g. ``weight_gain``); numeric ones only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError(f"numpy scalar of dtype {dtype!r} refused (numeric dtypes only)")
    return _np_scalar(dtype, data)


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol-2 pickles (``bytes`` did not exist in Python 2) write
    every non-empty ``bytes``, e.g. a tensor storage; latin-1 text to bytes and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"refused _codecs.encode of a {type(text).__name__} as {encoding!r} "
                              "(only latin-1 text, which is how protocol 2 writes bytes)")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how protocol-2 pickles write ``b''``. Nothing else (``bytes(n)`` would allocate n bytes)."""
    if args:
        raise CheckpointError("refused builtins.bytes with arguments (protocol 2 writes only b'' as bytes())")
    return b""


# Everything an NVlabs snapshot refers to by name, each mapped to an object of ours; nothing is imported.
_WHITELIST: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,  # protocol <= 3 pickles (Python 3.7) write sets as a call of set
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): _empty_bytes,  # protocol 2: b''
    ("_codecs", "encode"): _latin1_bytes,  # protocol 2: any other bytes
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
}
# torch.float32 etc. as pickled by name (``torch float32``), taken from torch's namespace once, here: a lookup
# in it never runs torch's module ``__getattr__``, which imports its lazy submodules (torch._dynamo, torch.onnx).
_TORCH_DTYPES: dict[str, torch.dtype] = {k: v for k, v in vars(torch).items() if isinstance(v, torch.dtype)}
# Python 2 module names that protocol <= 2 pickles write (pickle's fix_imports, which our find_class bypasses).
# copyreg only appears in protocol 0/1 pickles (protocol 2 has the NEWOBJ opcode), and nothing in it is allowed.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class NetworkUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals from the whitelist only. Names are looked up in tables
    built when this module was imported: no global from the file imports a module or reads a module attribute."""

    def __init__(self, file: Any, path: str | Path):
        super().__init__(file)
        self.path = str(path)

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        found = _WHITELIST.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]  # e.g. torch.float32 kept as a module attribute
        hint = ("if this file is trusted, convert it with NVlabs' own code" if not module.startswith("dnnlib.tflib")
                else "a TensorFlow StyleGAN pickle: convert it with stylegan2-ada-pytorch's legacy.py first")
        raise UnsafePickleError(
            f"{self.path}: refused global {f'{module}.{name}'[:200]}: not one an NVlabs network pickle needs, and "
            f"lagm_ray never runs code from a pickle ({hint})")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refused persistent id {str(pid)[:80]!r} (not in NVlabs pickles)")


def load_network_pickle(path: str | Path) -> Any:
    """The pickle's content with persistent objects as :class:`PersistentRecord`s and tensors as tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NVlabs network pickle not found: {path}")
    found = identify_file(path)
    if found.kind == "empty":
        raise CheckpointError(f"{path}: not a readable NVlabs network pickle: the file is empty")
    if found.kind == "torch":
        raise CheckpointError(f"{path}: this is {found.description}, not an NVlabs network pickle (a lagm_ray "
                              "generator checkpoint needs no import: use it as it is)")
    if found.kind != "pickle":
        raise CheckpointError(f"{path}: this is {found.description}, not an NVlabs network pickle")
    try:
        with open(path, "rb") as f:
            return NetworkUnpickler(f, path).load()
    except CheckpointError as e:  # UnsafePickleError stays one
        if str(e).startswith(f"{path}:"):
            raise
        raise type(e)(f"{path}: {e}") from e
    except Exception as e:  # EOFError, UnpicklingError, RecursionError, ... from a truncated or corrupt file
        raise CheckpointError(f"{path}: not a readable NVlabs network pickle (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------ generator


# NVlabs Generator.__init__'s positional parameters, to name any init_args.
_G_PARAMS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_MAPPING_OPTIONS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
_SYNTHESIS_OPTIONS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
                      "kernel_size", "use_noise", "activation"}
# Only the memory layout of fp16 layers on GPU: no parameter, no effect on the result.
_LAYOUT_ONLY = {"fp16_channels_last"}
_ACTIVATIONS = ("lrelu", "linear")  # what our bias_act implements


# What lagm_ray imports, checked on G_ema's init arguments before anything is built. The ranges are generous
# around every published StyleGAN2-ADA configuration (z_dim = w_dim = 512, 2-8 mapping layers, channel_base
# 16384-32768, channel_max 512, 32-1024 px); what bounds memory is MAX_GENERATOR_BYTES, on the parameters and
# buffers the arguments describe: 1 GiB of float32 (268M values), 8x NVlabs' 1024 px config-f generator
# (33.2M parameters and buffers; a 2048 px one with channel_max 1024 is 117M). An import holds the pickle's own
# tensors (G, G_ema and D) and builds the generator, and load_generator builds it once more from the import,
# so a generator at the bound peaks at a few GiB: fine on a training machine, refused before anything is built
# beyond it. A fixed bound, not the machine's free memory: the same file is accepted or refused everywhere.
MAX_GENERATOR_BYTES = 1 << 30
_MAX_DIM = 1 << 14  # z_dim, w_dim, c_dim, hidden features, channel_max (NVlabs: 512)
_MAX_RESOLUTION = 4096  # NVlabs' largest is 1024; power of two from 4
_MAX_SHOWN = 60  # characters of a refused value quoted in a message


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _argument_problems(kw: dict[str, Any], mapping: dict[str, Any], synthesis: dict[str, Any]) -> list[str]:
    """Type and range of every init argument; ``[]`` when the generator they describe can be sized and built."""
    problems: list[str] = []

    def integer(name: str, value: Any, low: int, high: int, optional: bool = False) -> bool:
        if (optional and value is None) or (_is_int(value) and low <= value <= high):
            return True
        problems.append(f"{name}={_shown(value)} (an integer in {low}..{high}{' or None' if optional else ''})")
        return False

    def real(name: str, value: Any, low: float, high: float, optional: bool = False, open_low: bool = False):
        if (optional and value is None) or (_is_real(value) and (low < value if open_low else low <= value)
                                            and value <= high):
            return
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        problems.append(f"{name}={_shown(value)} (a number in {interval}{' or None' if optional else ''})")

    def boolean(name: str, value: Any) -> None:
        if not isinstance(value, bool):
            problems.append(f"{name}={_shown(value)} (True or False)")

    dims_ok = [integer(k, kw[k], 0, _MAX_DIM) for k in ("z_dim", "c_dim")]
    integer("w_dim", kw["w_dim"], 1, _MAX_DIM)
    integer("img_channels", kw["img_channels"], 1, 4)
    res = kw["img_resolution"]
    res_ok = _is_int(res) and 4 <= res <= _MAX_RESOLUTION and res & (res - 1) == 0
    if not res_ok:
        problems.append(f"img_resolution={_shown(res)} (a power of two in 4..{_MAX_RESOLUTION})")
    if all(dims_ok) and kw["z_dim"] + kw["c_dim"] == 0:
        problems.append("z_dim=0 and c_dim=0 (the mapping network needs a latent or a label)")

    m = "mapping_kwargs."
    integer(m + "num_layers", mapping.get("num_layers", 8), 1, 64)
    integer(m + "embed_features", mapping.get("embed_features"), 1, _MAX_DIM, optional=True)
    integer(m + "layer_features", mapping.get("layer_features"), 1, _MAX_DIM, optional=True)
    real(m + "lr_multiplier", mapping.get("lr_multiplier", 0.01), 0, 1e3, open_low=True)
    real(m + "w_avg_beta", mapping.get("w_avg_beta", 0.995), 0, 1, optional=True)

    s = "synthesis_kwargs."
    base_ok = integer(s + "channel_base", synthesis.get("channel_base", 32768), 1, 1 << 24)
    integer(s + "channel_max", synthesis.get("channel_max", 512), 1, _MAX_DIM)
    if base_ok and res_ok and synthesis.get("channel_base", 32768) < res:
        problems.append(f"{s}channel_base={synthesis['channel_base']} (at least img_resolution={res}: channels "
                        "per block are channel_base // resolution)")
    integer(s + "num_fp16_res", synthesis.get("num_fp16_res", 0), 0, 16)
    real(s + "conv_clamp", synthesis.get("conv_clamp"), 0, 1e6, optional=True)
    kernel = synthesis.get("kernel_size", 3)
    if integer(s + "kernel_size", kernel, 1, 15) and kernel % 2 == 0:
        problems.append(f"{s}kernel_size={kernel} (odd: the convolutions keep their resolution)")
    boolean(s + "use_noise", synthesis.get("use_noise", True))
    boolean(s + "fp16_channels_last", synthesis.get("fp16_channels_last", False))
    taps = synthesis.get("resample_filter", [1, 3, 3, 1])
    if (not isinstance(taps, (list, tuple)) or not 1 <= len(taps) <= 16 or not all(map(_is_real, taps))
            or sum(taps) == 0):
        problems.append(f"{s}resample_filter={_shown(taps)} (1 to 16 numbers with a non-zero sum)")
    return problems


def generator_numel(init_kwargs: dict[str, Any]) -> int:
    """Parameters and buffers (``state_dict()`` and non-persistent buffers) of ``Generator(**init_kwargs)``,
    computed from the arguments alone, as ``Generator`` lays them out; for arguments that passed the checks."""
    z_dim, c_dim, w_dim = init_kwargs["z_dim"], init_kwargs["c_dim"], init_kwargs["w_dim"]
    mapping = init_kwargs.get("mapping_kwargs") or {}
    embed = (mapping.get("embed_features") or w_dim) if c_dim else 0
    hidden = mapping.get("layer_features") or w_dim
    features = [z_dim + embed] + [hidden] * (mapping.get("num_layers", 8) - 1) + [w_dim]
    n = c_dim * embed + embed if c_dim else 0
    n += sum(a * b + b for a, b in zip(features[:-1], features[1:]))  # fc layers: weight and bias
    n += w_dim if mapping.get("w_avg_beta", 0.995) is not None else 0  # w_avg

    res_max, img_channels = init_kwargs["img_resolution"], init_kwargs["img_channels"]
    base, cmax = init_kwargs.get("channel_base", 32768), init_kwargs.get("channel_max", 512)
    k, noise = init_kwargs.get("kernel_size", 3), init_kwargs.get("use_noise", True)
    taps = len(init_kwargs.get("resample_filter", [1, 3, 3, 1])) ** 2  # each resample_filter buffer: outer product

    def layer(c_in: int, c_out: int, res: int, taps: int) -> int:  # SynthesisLayer
        return taps + (w_dim * c_in + c_in) + c_out * c_in * k * k + ((res * res + 1) if noise else 0) + c_out

    res = 4
    while res <= res_max:
        ch = min(base // res, cmax)
        n += taps  # the block's resample_filter
        n += ch * res * res if res == 4 else layer(min(base // (res // 2), cmax), ch, res, taps)  # const or conv0
        n += layer(ch, ch, res, 16)  # conv1: not given resample_filter (as in NVlabs), so its default 4 taps
        n += (w_dim * ch + ch) + img_channels * ch + img_channels  # torgb: affine, 1x1 weight, bias
        res *= 2
    return n


_MAX_NESTING = 16  # of init arguments and training_set_kwargs (NVlabs: 2)
_MAX_VALUES = 10_000  # values in them, counted as copied (NVlabs: about 20)


def _plain(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """EasyDicts, OrderedDicts and tuples as dicts and lists, so ``torch.load(weights_only=True)`` reads them.
    A pickle's memo can make a container hold itself, or hold one container many times at every level (a few
    bytes in the file, exponentially many values to copy): nesting beyond ``_MAX_NESTING`` and more than
    ``_MAX_VALUES`` values are refused."""
    budget = [_MAX_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or (isinstance(value, (dict, list, tuple)) and depth >= _MAX_NESTING):
        raise CheckpointError(f"arguments nested more than {_MAX_NESTING} deep or holding more than {_MAX_VALUES} "
                              "values (a container that holds itself?)")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"arguments with a key that is not a string: {_shown(list(value))}")
        return {k: _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget, depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def find_generator_record(obj: Any, path: str | Path = "") -> PersistentRecord:
    """``G_ema`` of a snapshot dict, or the pickle itself when it holds one network."""
    if isinstance(obj, PersistentRecord):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("G_ema"), PersistentRecord):
        return obj["G_ema"]
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: no generator found: expected a snapshot dict with G_ema or a pickled "
                          f"network, got {keys}")


def generator_init_kwargs(record: PersistentRecord, path: str | Path = "") -> dict[str, Any]:
    """Our ``Generator(**kwargs)`` for an NVlabs ``Generator`` record; refuses options we do not implement."""
    where = f"{path}: G_ema" if path else "G_ema"
    if record.class_name != "Generator":
        raise CheckpointError(f"{where} is a {record.class_name}, not an NVlabs StyleGAN2 Generator")
    args, kwargs = record.state.get("_init_args") or (), record.state.get("_init_kwargs")
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict) or len(args) > len(_G_PARAMS):
        raise CheckpointError(f"{where} has no usable init arguments (not made by torch_utils.persistence?)")
    kw = {**dict(zip(_G_PARAMS, _plain(args))), **_plain(kwargs)}
    unknown = sorted(set(kw) - set(_G_PARAMS))
    missing = sorted({"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} - set(kw))
    if unknown or missing:
        raise CheckpointError(f"{where}: unsupported Generator arguments {unknown}, missing {missing}")
    mapping, raw_synthesis = kw.pop("mapping_kwargs", None) or {}, kw.pop("synthesis_kwargs", None) or {}
    if not isinstance(mapping, dict) or not isinstance(raw_synthesis, dict):
        raise CheckpointError(f"{where}: mapping_kwargs and synthesis_kwargs must be dicts, got "
                              f"{type(mapping).__name__} and {type(raw_synthesis).__name__}")
    mapping = dict(mapping)
    synthesis = {k: v for k, v in raw_synthesis.items() if k not in _LAYOUT_ONLY}
    problems = [f"mapping_kwargs.{k}" for k in sorted(set(mapping) - _MAPPING_OPTIONS)]
    problems += [f"synthesis_kwargs.{k}" for k in sorted(set(synthesis) - _SYNTHESIS_OPTIONS)]
    if synthesis.get("architecture", "skip") != "skip":
        problems.append(f"synthesis_kwargs.architecture={_shown(synthesis['architecture'])} (only 'skip', "
                        "StyleGAN2 config-f, is implemented)")
    for name, opts in (("mapping_kwargs", mapping), ("synthesis_kwargs", synthesis)):
        if opts.get("activation", "lrelu") not in _ACTIVATIONS:
            problems.append(f"{name}.activation={_shown(opts['activation'])} (only {', '.join(_ACTIVATIONS)})")
    if problems:
        raise CheckpointError(f"{where}: options our generator does not support: {'; '.join(problems)}")
    problems = _argument_problems(kw, mapping, {**raw_synthesis, **synthesis})
    if problems:
        raise CheckpointError(f"{where}: init arguments out of range: {'; '.join(problems)}")
    init_kwargs = {**kw, "mapping_kwargs": mapping, **synthesis}
    numel = generator_numel(init_kwargs)
    if numel * 4 > MAX_GENERATOR_BYTES:
        raise CheckpointError(
            f"{where}: its init arguments describe a generator of {numel:,} parameters and buffers "
            f"({numel * 4 / 2**30:,.1f} GiB as float32), more than the {MAX_GENERATOR_BYTES / 2**30:g} GiB lagm_ray "
            f"imports (nvlabs_import.MAX_GENERATOR_BYTES); nothing was built")
    return init_kwargs


_MAX_MODULE_DEPTH = 32  # NVlabs' G_ema: G_ema.synthesis.b1024.conv0.affine is 4 deep


def record_state_dict(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` of a record tree: persistent parameters and buffers under dotted names.
    A tree it must be: a pickle's memo can put one record under two parents (a walk that doubles at each
    level) or under itself; both are refused, as is nesting deeper than ``_MAX_MODULE_DEPTH``."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(rec: PersistentRecord, prefix: str, depth: int) -> None:
        where = prefix.rstrip(".") or "the network"
        if id(rec) in seen:
            raise CheckpointError(f"module {where} is reached twice (a module under two parents, or a loop)")
        if depth > _MAX_MODULE_DEPTH:
            raise CheckpointError(f"module {where} is nested more than {_MAX_MODULE_DEPTH} deep")
        seen.add(id(rec))
        state = rec.state
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        tables = {kind: state.get(kind) or {} for kind in ("_parameters", "_buffers", "_modules")}
        bad = [k for k, v in tables.items() if not isinstance(v, dict)]
        if bad or not isinstance(non_persistent, (set, frozenset)):
            raise CheckpointError(f"module {where}: {', '.join(bad) or '_non_persistent_buffers_set'} "
                                  "of the wrong type")
        for kind in ("_parameters", "_buffers"):
            for name, t in tables[kind].items():
                if t is None or (kind == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[f"{prefix}{name}"] = t
        for name, child in tables["_modules"].items():
            if child is None:
                continue
            if not isinstance(child, PersistentRecord):
                raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a network record")
            walk(child, f"{prefix}{name}.", depth + 1)

    walk(record, prefix, 0)
    return out


def generator_from_record(record: PersistentRecord, path: str | Path = "") -> tuple[Generator, dict[str, Any]]:
    """Our Generator with the record's weights, and the init kwargs that rebuild it."""
    init_kwargs = generator_init_kwargs(record, path)
    try:
        G = Generator(**init_kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build a generator from G_ema's arguments {init_kwargs}: {e}") from e
    theirs = record_state_dict(record)
    ours = G.state_dict()
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = [f"{k} {tuple(theirs[k].shape)} vs ours {tuple(ours[k].shape)}"
              for k in sorted(set(ours) & set(theirs)) if theirs[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: G_ema's tensors do not match the generator its arguments describe: "
                              f"missing {missing}, unexpected {unexpected}, shape mismatches {shapes}")
    G.load_state_dict({k: v.float() for k, v in theirs.items()}, strict=True)
    return G.eval().requires_grad_(False), init_kwargs


def import_generator(path: str | Path) -> tuple[Generator, dict[str, Any], dict[str, Any]]:
    """(generator, init kwargs, meta) from an NVlabs pickle: a snapshot dict, ``{'G_ema': ...}`` or a network."""
    obj = load_network_pickle(path)
    try:
        G, init_kwargs = generator_from_record(find_generator_record(obj, path), path)
        meta: dict[str, Any] = {"source": "nvlabs", "imported_from": str(path), "imported_sha256": sha256_file(path),
                                "resolution": G.img_resolution}
        if isinstance(obj, dict) and isinstance(obj.get("training_set_kwargs"), dict):
            kept = {k: v for k, v in _plain(obj["training_set_kwargs"]).items()
                    if v is None or isinstance(v, (bool, int, float, str))}
            meta["training_set_kwargs"] = kept
    except CheckpointError as e:  # every message starts with the file
        if str(e).startswith(f"{path}:"):
            raise
        raise type(e)(f"{path}: {e}") from e
    return G, init_kwargs, meta
