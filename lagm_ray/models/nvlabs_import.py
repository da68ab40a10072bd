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
  ``torch.load(weights_only=True)``.

:func:`import_generator` then rebuilds our :class:`~lagm_ray.models.generator.Generator` from ``G_ema``'s
init kwargs and loads the parameters and buffers found by walking the records' ``_modules`` /
``_parameters`` / ``_buffers``, with strict key and shape matching.
"""

from __future__ import annotations

import hashlib
import io
import pickle
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
    storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
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
    geometry = f"size {size!r}, stride {stride!r}, offset {storage_offset!r}"
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
            f"{self.path}: refused global {module}.{name}: not one an NVlabs network pickle needs, and "
            f"lagm_ray never runs code from a pickle ({hint})")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refused persistent id {str(pid)[:80]!r} (not in NVlabs pickles)")


def load_network_pickle(path: str | Path) -> Any:
    """The pickle's content with persistent objects as :class:`PersistentRecord`s and tensors as tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NVlabs network pickle not found: {path}")
    try:
        with open(path, "rb") as f:
            return NetworkUnpickler(f, path).load()
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from e
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


def _plain(value: Any) -> Any:
    """EasyDicts, OrderedDicts and tuples as dicts and lists, so ``torch.load(weights_only=True)`` reads them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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
    args = record.init_args
    if "_init_kwargs" not in record.state or len(args) > len(_G_PARAMS):
        raise CheckpointError(f"{where} has no usable init arguments (not made by torch_utils.persistence?)")
    kw = {**dict(zip(_G_PARAMS, args)), **_plain(record.init_kwargs)}
    unknown = sorted(set(kw) - set(_G_PARAMS))
    missing = sorted({"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} - set(kw))
    if unknown or missing:
        raise CheckpointError(f"{where}: unsupported Generator arguments {unknown}, missing {missing}")
    mapping = dict(kw.pop("mapping_kwargs", None) or {})
    synthesis = {k: v for k, v in dict(kw.pop("synthesis_kwargs", None) or {}).items() if k not in _LAYOUT_ONLY}
    problems = [f"mapping_kwargs.{k}" for k in sorted(set(mapping) - _MAPPING_OPTIONS)]
    problems += [f"synthesis_kwargs.{k}" for k in sorted(set(synthesis) - _SYNTHESIS_OPTIONS)]
    if synthesis.get("architecture", "skip") != "skip":
        problems.append(f"synthesis_kwargs.architecture={synthesis['architecture']!r} (only 'skip', StyleGAN2 "
                        "config-f, is implemented)")
    for name, opts in (("mapping_kwargs", mapping), ("synthesis_kwargs", synthesis)):
        if opts.get("activation", "lrelu") not in _ACTIVATIONS:
            problems.append(f"{name}.activation={opts['activation']!r} (only {', '.join(_ACTIVATIONS)})")
    if problems:
        raise CheckpointError(f"{where}: options our generator does not support: {'; '.join(problems)}")
    return {**kw, "mapping_kwargs": mapping, **synthesis}


def record_state_dict(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` of a record tree: persistent parameters and buffers under dotted names."""
    out: dict[str, torch.Tensor] = {}
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a network record")
        out.update(record_state_dict(child, f"{prefix}{name}."))
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
    G, init_kwargs = generator_from_record(find_generator_record(obj, path), path)
    meta: dict[str, Any] = {"source": "nvlabs", "imported_from": str(path), "imported_sha256": sha256_file(path),
                            "resolution": G.img_resolution}
    if isinstance(obj, dict) and isinstance(obj.get("training_set_kwargs"), dict):
        kept = {k: v for k, v in _plain(obj["training_set_kwargs"]).items()
                if v is None or isinstance(v, (bool, int, float, str))}
        meta["training_set_kwargs"] = kept
    return G, init_kwargs, meta
