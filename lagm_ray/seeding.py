"""Seeds and the global RNG states a checkpoint carries, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """All global RNG states, as tensors/ints/floats/strs only so weights_only loading accepts them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        # MT19937 keys are uint32: int64 holds them without sign trouble.
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": (int(version), torch.tensor(py_state, dtype=torch.int64), gauss_next),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in py_state.tolist()), gauss_next))
    # A checkpoint from a GPU run may be resumed on CPU (and vice versa): restore CUDA only if both sides have it.
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
