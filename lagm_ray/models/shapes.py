"""Shape checks at the entry of the networks' forward passes, in the manner of NVlabs' misc.assert_shape."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def assert_shape(x: Any, ref_shape: Sequence[int | str], net: str, arg: str) -> None:
    """NVlabs' ``misc.assert_shape``, raising ValueError (``assert`` vanishes under ``python -O``).

    ``x`` must be a tensor with ``len(ref_shape)`` dimensions; an int entry must equal that size, a str
    entry (``"N"``, ``"H"``) accepts any size and names it in the message, e.g.
    ``FPNAnnotator: features[2] must be [N, 64, H, W], got [4, 32, 16, 16]``. Reads ``x.shape`` only
    (Python ints): no host sync, no autograd node, transparent to ``torch.func.functional_call``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{net}: {arg} must be a tensor [{_shape_str(ref_shape)}], got {type(x).__name__}")
    if x.ndim != len(ref_shape) or any(isinstance(r, int) and s != r for s, r in zip(x.shape, ref_shape)):
        raise ValueError(f"{net}: {arg} must be [{_shape_str(ref_shape)}], got [{_shape_str(x.shape)}]")


def _shape_str(shape: Sequence[int | str]) -> str:
    return ", ".join(str(d) for d in shape)
