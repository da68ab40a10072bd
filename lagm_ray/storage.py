"""Files written whole or not at all, checksums, weights-only checkpoint loading, and the code version
(here rather than in the MLflow layer because dataset manifests record it too)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import CheckpointError, UnsafePickleError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` only if the body succeeds,
    so readers never see a half-written file (same directory -> same filesystem -> atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit (with a dirty marker)."""
    from . import __version__

    info = {"lagm_ray.version": __version__}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            info["git.commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, in its legacy format, a pickle): anything else is named as such
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        what = "an empty file" if not head else f"a file beginning {head!r}"
        raise CheckpointError(f"{path}: not a torch checkpoint ({what}; torch.save writes a zip archive)")
    try:
        # weights_only refuses arbitrary pickled objects, so a hostile file cannot run code.
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise torch_load_error(path, e) from None  # torch's own message advises weights_only=False


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
    reason = reason.split(". ")[0]  # torch's first sentence; the rest is advice
    return CheckpointError(f"{where}: cannot read it as a torch checkpoint: {type(e).__name__}: {reason[:300]}")
