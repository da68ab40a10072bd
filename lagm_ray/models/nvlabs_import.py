"""Rebuild our StyleGAN2 from an NVlabs network pickle read by :mod:`lagm_ray.models.safe_pickle`.

:func:`import_generator` then checks ``G_ema``'s init arguments (types, ranges, and the size of the generator
they describe, at most ``MAX_GENERATOR_BYTES``) before anything is built, rebuilds our
:class:`~lagm_ray.models.generator.Generator` from them and loads the parameters and buffers found by walking
the records' ``_modules`` / ``_parameters`` / ``_buffers``, with strict key and shape matching.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..storage import sha256_file
from .generator import Generator
from .safe_pickle import PersistentRecord, is_int, load_network_pickle, shown

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
def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _argument_problems(kw: dict[str, Any], mapping: dict[str, Any], synthesis: dict[str, Any]) -> list[str]:
    """Type and range of every init argument; ``[]`` when the generator they describe can be sized and built."""
    problems: list[str] = []

    def integer(name: str, value: Any, low: int, high: int, optional: bool = False) -> bool:
        if (optional and value is None) or (is_int(value) and low <= value <= high):
            return True
        problems.append(f"{name}={shown(value)} (an integer in {low}..{high}{' or None' if optional else ''})")
        return False

    def real(name: str, value: Any, low: float, high: float, optional: bool = False, open_low: bool = False):
        if (optional and value is None) or (_is_real(value) and (low < value if open_low else low <= value)
                                            and value <= high):
            return
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        problems.append(f"{name}={shown(value)} (a number in {interval}{' or None' if optional else ''})")

    def boolean(name: str, value: Any) -> None:
        if not isinstance(value, bool):
            problems.append(f"{name}={shown(value)} (True or False)")

    dims_ok = [integer(k, kw[k], 0, _MAX_DIM) for k in ("z_dim", "c_dim")]
    integer("w_dim", kw["w_dim"], 1, _MAX_DIM)
    integer("img_channels", kw["img_channels"], 1, 4)
    res = kw["img_resolution"]
    res_ok = is_int(res) and 4 <= res <= _MAX_RESOLUTION and res & (res - 1) == 0
    if not res_ok:
        problems.append(f"img_resolution={shown(res)} (a power of two in 4..{_MAX_RESOLUTION})")
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
        problems.append(f"{s}resample_filter={shown(taps)} (1 to 16 numbers with a non-zero sum)")
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
        if res > 4:
            n += layer(min(base // (res // 2), cmax), ch, res, taps)  # conv0
        elif init_kwargs.get("input_mode", "const") == "w":  # ours: a linear map from w (weight and bias)
            n += w_dim * ch * 16 + ch * 16
        else:
            n += ch * 16  # NVlabs' learned constant
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
            raise CheckpointError(f"arguments with a key that is not a string: {shown(list(value))}")
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
        problems.append(f"synthesis_kwargs.architecture={shown(synthesis['architecture'])} (only 'skip', "
                        "StyleGAN2 config-f, is implemented)")
    for name, opts in (("mapping_kwargs", mapping), ("synthesis_kwargs", synthesis)):
        if opts.get("activation", "lrelu") not in _ACTIVATIONS:
            problems.append(f"{name}.activation={shown(opts['activation'])} (only {', '.join(_ACTIVATIONS)})")
    if problems:
        raise CheckpointError(f"{where}: options our generator does not support: {'; '.join(problems)}")
    problems = _argument_problems(kw, mapping, {**raw_synthesis, **synthesis})
    if problems:
        raise CheckpointError(f"{where}: init arguments out of range: {'; '.join(problems)}")
    init_kwargs = {**kw, "mapping_kwargs": mapping, **synthesis}
    _check_size(init_kwargs, where)
    return init_kwargs


def check_generator_init_kwargs(init_kwargs: Any, where: str) -> None:
    """The same bounds for a lagm_ray generator checkpoint's ``init_kwargs`` (``Generator``'s own flat
    layout), before ``Generator(**init_kwargs)`` allocates anything: a .pt file is data, like a pickle."""
    if not isinstance(init_kwargs, dict) or not all(isinstance(k, str) for k in init_kwargs):
        raise CheckpointError(f"{where}: init_kwargs must be a dict of named arguments")
    mapping = init_kwargs.get("mapping_kwargs") or {}
    kw = {k: v for k, v in init_kwargs.items() if k in _G_PARAMS}
    synthesis = {k: v for k, v in init_kwargs.items() if k not in _G_PARAMS}
    unknown = sorted(set(synthesis) - _SYNTHESIS_OPTIONS - _LAYOUT_ONLY - {"input_mode"})
    if synthesis.pop("input_mode", "const") not in ("const", "w"):  # ours: the toy generator's 'w'
        raise CheckpointError(f"{where}: input_mode must be 'const' or 'w', got {shown(init_kwargs['input_mode'])}")
    missing = sorted({"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} - set(kw))
    if unknown or missing or not isinstance(mapping, dict) or set(mapping) - _MAPPING_OPTIONS:
        raise CheckpointError(f"{where}: unsupported generator init_kwargs (unknown {unknown}, missing {missing})")
    problems = _argument_problems(kw, mapping, synthesis)
    if problems:
        raise CheckpointError(f"{where}: init arguments out of range: {'; '.join(problems)}")
    _check_size(init_kwargs, where)


def _check_size(init_kwargs: dict[str, Any], where: str) -> None:
    numel = generator_numel(init_kwargs)
    if numel * 4 > MAX_GENERATOR_BYTES:
        raise CheckpointError(
            f"{where}: its init arguments describe a generator of {numel:,} parameters and buffers "
            f"({numel * 4 / 2**30:,.1f} GiB as float32), more than the {MAX_GENERATOR_BYTES / 2**30:g} GiB lagm_ray "
            f"imports (nvlabs_import.MAX_GENERATOR_BYTES); nothing was built")


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
