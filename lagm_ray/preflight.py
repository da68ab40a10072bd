"""What can be checked before any training, worker or Ray starts: the generator readable and fitting the
data, the dataset folder there, the output and tracking locations writable. A mistake found here costs a
second and one line on stderr (ConfigError naming the key), not a trial's start-up, retries and tracebacks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

from .data.datasets import dataset_class_names
from .errors import ConfigError
from .methods import Config, trainer_class
from .synthetic import check_generator_fits, read_generator_checkpoint
from .tracking import tracking_uri


def check_run(cfg: Config, track: bool = True) -> None:
    """Everything about ``cfg`` that needs no training; raises ConfigError (or CheckpointError for an
    unreadable generator) naming the key or file."""
    check_data(cfg)
    if trainer_class(cfg.train.method).uses_generator(cfg):
        check_generator(cfg)
    if cfg.segmentor.init != "scratch" and not Path(cfg.segmentor.init).is_file():
        raise ConfigError(f"segmentor.init: {cfg.segmentor.init} is not a file (a weights file, or 'scratch')")
    check_writable_dir(cfg.run.output_dir, "run.output_dir")
    if track and cfg.tracking.enabled:
        check_tracking_uri(cfg.tracking.uri)


def check_runs(configs: Iterable[Config], track: bool = True) -> None:
    """:func:`check_run` for each config, once per distinct set of the keys it reads: a sweep over train.K
    reads its generator checkpoint once, not once per value."""
    seen: set[tuple] = set()
    for cfg in configs:
        d = cfg.data
        key = (d.dataset, d.category, d.root, d.unlabelled_root, d.resolution, cfg.train.method,
               cfg.generator.checkpoint, cfg.segmentor.init, cfg.run.output_dir,
               track and cfg.tracking.enabled, cfg.tracking.uri)
        if key not in seen:
            seen.add(key)
            check_run(cfg, track)


def check_data(cfg: Config) -> None:
    d = cfg.data
    dataset_class_names(d)  # an unknown dataset or category
    if d.dataset != "embedded" and not d.root:
        raise ConfigError(f"data.root: dataset {d.dataset!r} needs its root folder (data.root=/path/to/it)")
    for key in ("root", "unlabelled_root"):
        root = getattr(d, key)
        if root is not None and "://" not in str(root) and not Path(root).is_dir():
            raise ConfigError(f"data.{key}: {root} is not a directory")


def check_generator(cfg: Config) -> None:
    g = cfg.generator
    _, ckpt = read_generator_checkpoint(g.checkpoint)
    check_generator_fits(g.checkpoint, int(ckpt["init_kwargs"]["img_resolution"]),
                         (ckpt.get("meta") or {}).get("class_names"), cfg.data.resolution,
                         dataset_class_names(cfg.data))


def check_writable_dir(path: str | Path, key: str) -> None:
    """``path`` must be a folder this process can make and write in: refused naming ``key`` when a file is in
    the way, or when a file cannot be made in its nearest existing folder (tried for real, and removed: as
    root, access() says yes to everything). Nothing is left behind, not even the folder."""
    p = Path(path).absolute()
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".lagm-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}: cannot write in {existing} ({e.strerror or e})") from None


def check_tracking_uri(uri: str | None) -> None:
    """A local MLflow store (SQLite file or folder) must be writable; a server is MLflow's to reach."""
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.exists() and not db.is_file():
            raise ConfigError(f"tracking.uri: {db} is not a SQLite file")
        check_writable_dir(db.parent, "tracking.uri")
    elif uri.startswith("file:") or "://" not in uri:
        check_writable_dir(uri.removeprefix("file://").removeprefix("file:"), "tracking.uri")
