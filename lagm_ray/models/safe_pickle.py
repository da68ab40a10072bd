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
by :func:`lagm_ray.storage.torch_load_error`: torch's advice to load with ``weights_only=False`` is never passed on).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError, UnsafePickleError
from ..storage import torch_load_error

try:  # numpy >= 2 pickles scalars as numpy._core.multiarray.scalar, numpy 1 as numpy.core.multiarray.scalar
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import scalar as _np_scalar


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


MAX_SHOWN = 60  # characters of a refused value quoted in a message


def shown(value: Any) -> str:
    """``repr(value)``, cut short: hostile files can hold values of any length."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_view(storage_offset: Any, size: Any, stride: Any, storage_numel: int) -> None:
    """A tensor view must lie inside its storage: ``Tensor.set_`` (which torch's own rebuild calls) grows a
    storage that is too small, so a view past its end would come back padded with uninitialised memory
    (or allocate as much as its size asks). Refuses negative or non-integer offsets, sizes and strides."""
    geometry = f"size {shown(size)}, stride {shown(stride)}, offset {shown(storage_offset)}"
    if (not is_int(storage_offset) or not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list))
            or not all(map(is_int, size)) or not all(map(is_int, stride))):
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


