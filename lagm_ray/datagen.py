"""Labelled synthetic datasets from a learned annotator, as parquet shards (`lagm generate`).

Users train downstream segmentors on large generated sets (Table 1's downstream protocol, DatasetGAN's).
This is the pure-torch core: no Ray and no MLflow (those are :mod:`lagm_ray.distributed.generate` and
:mod:`lagm_ray.tracking`). A dataset directory holds::

    DIR/_manifest.json        identity, schema, class names, shards with row counts and sha256, filtering
    DIR/shard-00000.parquet   the rows of seeds [seed, seed + shard_size), then the next shard_size seeds ...
    DIR/.lock                 held (flock) by the one process writing to DIR

The manifest's leading underscore (and the lock's dot) make pyarrow and pandas skip them, so
``pandas.read_parquet(DIR)`` reads the shards as they are.

Rows. ``seed`` (int64), ``truncation`` (float64), ``image`` (RGB PNG), ``label`` (palette PNG whose pixel
values are class ids, at the image resolution), ``confidence`` (mean over pixels of the annotator's max
softmax probability) and ``entropy`` (mean per-pixel entropy, nats), both at the annotator's own output
resolution; and, for the embedded world, ``true_mask`` (palette PNG).

Determinism. A row is a function of its seed and of the dataset's identity (annotator and generator
files, truncation, filters, forward batch size): each latent comes from its own
``torch.Generator().manual_seed(seed)`` and shard k always holds the same seeds, so the number of workers,
the order they finish in and the thread count change nothing. The forward batch size is part of the
identity because CPU matrix products round differently for different batch sizes (about 1e-6), which is
enough to move a few pixels across a uint8 boundary. Between a CPU and a GPU, rows agree only up to such
rounding.

Safety. A shard is written under a temporary name and renamed (never half-written); the manifest is
written when generation starts (``status: incomplete``, so a different command into the same directory is
refused even after a kill) and again when it ends. A re-run writes only missing shards; shards on disk are
checked (parquet page checksums, their recorded identity) before they are trusted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from . import __version__
from .data.datasets import resize_labels
from .storage import (
    atomic_path,
    atomic_write_text,
    code_version,
    sha256_file,
)
from .synthetic import (
    SyntheticSource,
    feature_index,
    feature_select,
    resolve_generator_path,
    to_size,
)

DATASET_FORMAT = "lagm_ray.dataset/v1"
MANIFEST = "_manifest.json"
LOCK = ".lock"
META_KEY = b"lagm_ray"
SHARD_GLOB = "shard-*.parquet"
PNG_LEVEL = 6  # zlib level: fixed, so the same pixels always give the same bytes


class DatasetError(ValueError):
    """A dataset directory, manifest or shard is missing, corrupt or does not match; the message names the file."""


class SettingsMismatch(DatasetError):
    """The directory (manifest or a shard) holds rows of another identity than the command asks for."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate. Every field changes the rows, so all of them are part of a dataset's identity."""

    num_images: int
    shard_size: int = 500
    seed: int = 0  # shard k holds seeds [seed + k * shard_size, seed + (k + 1) * shard_size)
    batch_size: int = 16  # generator forward batch (see the module docstring for why it is identity)
    truncation_psi: float | None = None  # None: the annotator run's generator.truncation_psi
    min_confidence: float | None = None  # drop images whose confidence is below (DatasetGAN-style filtering)
    max_entropy: float | None = None  # drop images whose mean entropy is above

    def __post_init__(self) -> None:
        for name in ("num_images", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.truncation_psi is not None and self.truncation_psi < 0:
            raise ValueError(f"truncation_psi must be >= 0, got {self.truncation_psi}")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.max_entropy is not None and self.max_entropy < 0:
            raise ValueError(f"max_entropy must be >= 0, got {self.max_entropy}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_images / self.shard_size)

    def shard_seeds(self, index: int) -> range:
        start = index * self.shard_size
        return range(self.seed + start, self.seed + min(start + self.shard_size, self.num_images))

    def chunks(self, index: int) -> Iterator[range]:
        """Forward batches of a shard, aligned at the shard's first seed (so a shard's rows never depend
        on which other shards a worker happens to generate)."""
        seeds = self.shard_seeds(index)
        for i in range(0, len(seeds), self.batch_size):
            yield seeds[i:i + self.batch_size]

    def keep(self, confidence: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(confidence, dtype=torch.bool)
        if self.min_confidence is not None:
            keep &= confidence >= self.min_confidence
        if self.max_entropy is not None:
            keep &= entropy <= self.max_entropy
        return keep

    def resolved(self, truncation_psi: float) -> "GenerationSpec":
        return dataclasses.replace(self, truncation_psi=float(truncation_psi))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ the annotator


@dataclass(frozen=True)
class AnnotatorInfo:
    """Who labels: a run checkpoint and its generator, identified by content (sha256), not by path.
    Cheap to build (no networks) and picklable, so a Ray driver describes and its actors load."""

    path: str
    sha256: str
    step: int
    config: dict[str, Any]  # the annotator run's config
    class_names: tuple[str, ...]
    generator_spec: str  # as the run's config names it (``embedded:faces`` or a path)
    generator_path: str
    generator_sha256: str
    resolution: int
    truncation_psi: float
    true_masks: bool  # embedded world at psi = 1: every image has an exact mask

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record(self) -> dict[str, Any]:
        return {"annotator": {"path": self.path, "sha256": self.sha256, "step": self.step, "config": self.config},
                "generator": {"spec": self.generator_spec, "path": self.generator_path,
                              "sha256": self.generator_sha256, "resolution": self.resolution}}


@dataclass
class Samples:
    """Generated, labelled images (on the CPU); labels and true masks at the image resolution."""

    seeds: torch.Tensor  # [N] int64
    images: torch.Tensor  # [N, 3, R, R] in [-1, 1]
    labels: torch.Tensor  # [N, R, R] int64
    confidence: torch.Tensor  # [N] float32
    entropy: torch.Tensor  # [N] float32
    true_masks: torch.Tensor | None  # [N, R, R] int64, embedded world only

    def columns(self) -> list[torch.Tensor | None]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def select(self, keep: torch.Tensor) -> "Samples":
        return Samples(*(None if t is None else t[keep] for t in self.columns()))

    @staticmethod
    def cat(parts: Sequence["Samples"]) -> "Samples":
        cols = list(zip(*(p.columns() for p in parts)))
        return Samples(*(None if c[0] is None else torch.cat(c) for c in cols))


def check_same_file(what: str, file: str | os.PathLike, sha256: str) -> None:
    """The file an actor (or a resumed run) loads must be the one the generation was planned with."""
    if sha256_file(file) != sha256:
        raise DatasetError(f"{file}: this {what} differs from the one the generation was planned with "
                           f"(sha256 {sha256[:12]}...): is it the same file on every node?")


def labelling_source(info: AnnotatorInfo, cfg, device: torch.device | str = "cpu"
                     ) -> tuple[SyntheticSource, list[int]]:
    """The annotator run's generator (``cfg``: the run's parsed config), at the resolution its annotator was
    trained at (synthesis may stop below the generator's), and the indices of the feature blocks it reads."""
    g = cfg.generator
    # embedded:<category> resolves to this node's package assets; any other path is taken as given
    # (shared storage on a cluster). Either way the file must be the one the driver described.
    spec = g.checkpoint if g.checkpoint.startswith("embedded:") else info.generator_path
    check_same_file("generator", resolve_generator_path(spec), info.generator_sha256)
    source = SyntheticSource.from_spec(spec, device, truncation_psi=info.truncation_psi,
                                       truncation_cutoff=g.truncation_cutoff, noise_mode=g.noise_mode,
                                       resolution=info.resolution)
    return source, feature_index(source.block_resolutions, cfg.annotator.feature_resolutions)


class Labeller:
    """The generator and the annotator, loaded once (one per Ray actor): seeds -> :class:`Samples`.
    ``source`` and ``feature_index`` from :func:`labelling_source`; ``annotator`` built and loaded by the
    caller (:func:`lagm_ray.annotator_runs.load_labeller` rebuilds a run's)."""

    def __init__(self, info: AnnotatorInfo, source: SyntheticSource, feature_index: Sequence[int],
                 annotator: nn.Module):
        self.info = info
        self.source = source
        self.device = source.device
        self.feature_index = list(feature_index)
        self.annotator = annotator.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, seeds: Sequence[int]) -> Samples:
        z = self.source.seeded_latents(seeds)
        # noise_mode "random" draws from the global RNG: seed it from the batch so rows stay reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            batch = self.source.sample(len(seeds), z=z)
            logits = self.annotator(feature_select(batch.features, self.feature_index)).float()
        confidence, entropy = uncertainty(logits)
        res = self.source.resolution
        return Samples(seeds=torch.as_tensor(list(seeds), dtype=torch.int64), images=batch.images.cpu(),
                       labels=resize_labels(logits.argmax(1), res).cpu(), confidence=confidence,
                       entropy=entropy, true_masks=None if batch.true_masks is None else batch.true_masks.cpu())


def uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: mean over pixels of the max softmax probability, and of the entropy (nats).

    In float64 numpy rather than torch: torch splits reductions across its intra-op threads, so the
    summation order (and the last bits of a float32 mean) would depend on how many CPUs a worker has."""
    lg = logits.detach().cpu().double().numpy()
    lg = lg - lg.max(axis=1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    B = lg.shape[0]
    confidence = p.max(axis=1).reshape(B, -1).mean(axis=1)
    entropy = -(p * logp).sum(axis=1).reshape(B, -1).mean(axis=1)
    return torch.from_numpy(confidence.astype(np.float32)), torch.from_numpy(entropy.astype(np.float32))


def generate_samples(labeller: Labeller, spec: GenerationSpec, shards: Sequence[int] | None = None) -> Samples:
    """The rows of ``shards`` (default all) in memory, as tensors, filtered as the spec says: what the shard
    files hold before PNG encoding. For tests and small in-memory sets."""
    parts = []
    for index in range(spec.num_shards) if shards is None else shards:
        for seeds in spec.chunks(index):
            s = labeller(seeds)
            parts.append(s.select(spec.keep(s.confidence, s.entropy)))
    return Samples.cat(parts)


# ------------------------------------------------------------------------------------------ encoding


def encode_image(image: torch.Tensor) -> bytes:
    from PIL import Image

    from .viz import to_uint8_image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def encode_mask(mask: torch.Tensor, num_classes: int) -> bytes:
    """A palette PNG: pixel values are class ids (decode to ids with ``np.asarray(Image.open(...))``),
    shown in the VOC colours of :func:`lagm_ray.viz.palette` by any image viewer."""
    from PIL import Image

    from .viz import palette

    im = Image.fromarray(mask.numpy().astype(np.uint8))
    im.putpalette(palette(num_classes).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def uint8_to_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float in [-1, 1] (the inverse of viz.to_uint8_image up to rounding).

    Contiguous on purpose: a permuted HWC tensor is channels-last, and a segmentor's convolutions take other
    kernels (other rounding, another trained network) on channels-last input than on the usual layout."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().contiguous()
    return x / 127.5 - 1.0


def decode_images(blobs: Sequence[bytes], size: int | None = None) -> torch.Tensor:
    images = uint8_to_images(np.stack([decode_png(b) for b in blobs]))
    return images if size is None else to_size(images, size)


def decode_masks(blobs: Sequence[bytes], size: int | None = None) -> torch.Tensor:
    masks = torch.as_tensor(np.stack([decode_png(b) for b in blobs]).astype(np.int64))
    return masks if size is None else resize_labels(masks, size)


def training_pair(samples: Samples, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory samples as a segmentor sees them once stored: 8-bit images (as PNG keeps them) at ``size``,
    labels at ``size``. Equal, bit for bit, to :func:`load_tensors` on the shards of the same seeds."""
    from .viz import to_uint8_image

    images = uint8_to_images(np.stack([to_uint8_image(im) for im in samples.images]))
    if size is not None:
        return to_size(images, size), resize_labels(samples.labels, size)
    return images, samples.labels


# ------------------------------------------------------------------------------------------ shards


def dataset_schema(true_masks: bool) -> pa.Schema:
    fields = [pa.field("seed", pa.int64(), nullable=False), pa.field("truncation", pa.float64(), nullable=False),
              pa.field("image", pa.binary(), nullable=False), pa.field("label", pa.binary(), nullable=False),
              pa.field("confidence", pa.float32(), nullable=False), pa.field("entropy", pa.float32(), nullable=False)]
    if true_masks:
        fields.append(pa.field("true_mask", pa.binary(), nullable=False))
    return pa.schema(fields)


def schema_record(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def identity(info: AnnotatorInfo, spec: GenerationSpec) -> dict[str, Any]:
    """Everything that determines the rows. A directory only ever holds rows of one identity."""
    return {"format": DATASET_FORMAT, "lagm_ray.version": __version__, "annotator_sha256": info.sha256,
            "generator_sha256": info.generator_sha256, "class_names": list(info.class_names),
            **spec.resolved(info.truncation_psi).to_dict()}


def generate_shard(labeller: Labeller, spec: GenerationSpec, index: int,
                   extra_meta: dict[str, Any] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Shard ``index`` as an arrow table (schema metadata: identity, classes, generator, annotator, shard),
    and its statistics. Images are encoded batch by batch, so memory holds PNG bytes, not tensors."""
    info = labeller.info
    spec = spec.resolved(info.truncation_psi)
    C = info.num_classes
    cols: dict[str, list] = {f.name: [] for f in dataset_schema(info.true_masks)}
    filtered = 0
    for seeds in spec.chunks(index):
        s = labeller(seeds)
        keep = spec.keep(s.confidence, s.entropy)
        filtered += int((~keep).sum())
        for j in torch.nonzero(keep).flatten().tolist():
            cols["seed"].append(int(s.seeds[j]))
            cols["truncation"].append(spec.truncation_psi)
            cols["image"].append(encode_image(s.images[j]))
            cols["label"].append(encode_mask(s.labels[j], C))
            cols["confidence"].append(float(s.confidence[j]))
            cols["entropy"].append(float(s.entropy[j]))
            if info.true_masks:
                cols["true_mask"].append(encode_mask(s.true_masks[j], C))
    seeds = spec.shard_seeds(index)
    stats = {"index": index, "file": shard_name(index), "seeds": [seeds.start, seeds.stop],
             "rows": len(cols["seed"]), "filtered": filtered,
             "confidence_mean": float(np.mean(cols["confidence"])) if cols["seed"] else None,
             "entropy_mean": float(np.mean(cols["entropy"])) if cols["seed"] else None}
    meta = {"identity": identity(info, spec), "shard": stats, **info.record(), **(extra_meta or {})}
    schema = dataset_schema(info.true_masks).with_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    return pa.table(cols, schema=schema), stats


def write_shard(table: pa.Table, path: str | os.PathLike) -> None:
    """Atomically (temp name in the same directory, then rename); with parquet page checksums so that a
    corrupt page is detected on read. PNG bytes do not compress further, and are never repeated."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="none", use_dictionary=False, write_page_checksum=True)


def shard_metadata(schema: pa.Schema, path: Path) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DatasetError(f"{path}: not a lagm_ray dataset shard (no {META_KEY.decode()} schema metadata)")
    return json.loads(raw)


def produce_shard(labeller: Labeller, spec: GenerationSpec, index: int, out: str | os.PathLike,
                  extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate and atomically write shard ``index`` into ``out``; returns its manifest entry (plus the
    seconds it took and this process's peak RSS, which the manifest keeps out of the entry)."""
    t0 = time.perf_counter()
    table, stats = generate_shard(labeller, spec, index, extra_meta)
    path = Path(out) / stats["file"]
    write_shard(table, path)
    del table
    return {**stats, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def check_shard(path: Path, expected_identity: dict[str, Any], index: int) -> dict[str, Any]:
    """A shard already on disk, read in full with page checksums verified: its manifest entry, or
    :class:`DatasetError` naming the file."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: unreadable or corrupt parquet shard ({e})") from e
    meta = shard_metadata(table.schema, path)
    if meta.get("identity") != expected_identity:
        raise SettingsMismatch(f"{path}: this shard was generated with different settings "
                               f"({_diff(meta.get('identity') or {}, expected_identity)})")
    stats = meta["shard"]
    if stats.get("index") != index or stats.get("rows") != table.num_rows:
        raise DatasetError(f"{path}: shard metadata says index {stats.get('index')} with {stats.get('rows')} rows, "
                           f"the file is shard {index} with {table.num_rows} rows")
    return {**stats, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys) or "no difference"


# ------------------------------------------------------------------------------------------ planning


def _read_manifest_file(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: not a lagm_ray dataset manifest (format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


@dataclass
class Plan:
    """One generation into ``out``: what is there, what is missing, and the manifest to write at the end.
    Holds the directory's lock from :func:`plan` until :meth:`finish` or :meth:`close`."""

    out: Path
    info: AnnotatorInfo
    spec: GenerationSpec
    manifest: dict[str, Any]
    done: dict[int, dict[str, Any]]
    missing: list[int]
    replaced: list[str] = field(default_factory=list)  # corrupt shards found on disk, to be regenerated
    written: dict[int, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _lock: Any = None

    def record(self, entry: dict[str, Any]) -> None:
        self.written[int(entry["index"])] = entry

    @property
    def images_done(self) -> int:
        shards = set(self.done) | set(self.written)
        return sum(len(self.spec.shard_seeds(i)) for i in shards)

    def finish(self, run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check every shard was written and write the complete manifest; returns it."""
        missing = [i for i in self.missing if i not in self.written]
        if missing:
            raise DatasetError(f"{self.out / MANIFEST}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} were "
                               "not written; run the same command again to finish")
        seconds = time.perf_counter() - self.started
        entries = {**self.done, **self.written}
        keys = ("file", "index", "seeds", "rows", "filtered", "bytes", "sha256", "confidence_mean", "entropy_mean")
        shards = [{k: entries[i][k] for k in keys} for i in sorted(entries)]
        rows = sum(s["rows"] for s in shards)
        filtered = sum(s["filtered"] for s in shards)

        def mean(key: str) -> float | None:
            return sum(s[key] * s["rows"] for s in shards if s["rows"]) / rows if rows else None

        generated_now = sum(len(self.spec.shard_seeds(i)) for i in self.written)
        w = self.written.values()
        m = dict(self.manifest)
        m.update({
            "status": "complete", "rows": rows, "num_shards": len(shards), "shards": shards,
            "filter": {**m["filter"], "filtered": filtered, "kept_fraction": rows / self.spec.num_images},
            "stats": {"confidence_mean": mean("confidence_mean"), "entropy_mean": mean("entropy_mean")},
            "code_version": code_version(),
            "last_run": {"shards_written": len(self.written), "shards_reused": len(self.done),
                         "shards_replaced": self.replaced, "images_generated": generated_now,
                         "seconds": seconds, "images_per_s": generated_now / seconds if seconds > 0 else None,
                         "worker_peak_rss_mb": max((e.get("peak_rss_mb", 0.0) for e in w), default=None),
                         "driver_peak_rss_mb": peak_rss_mb(), **(run or {})},
        })
        write_manifest(self.out, m)
        self.close()
        return m

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _lock_directory(out: Path):
    import fcntl

    f = open(out / LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise DatasetError(f"{out / LOCK}: another `lagm generate` is writing to {out}") from None
    return f


def plan(out: str | os.PathLike, info: AnnotatorInfo, spec: GenerationSpec,
         warn: Callable[[str], None] | None = None) -> Plan:
    """Lock ``out``, check it holds nothing of another identity, remove temp files a killed run left, keep the
    shards that verify, and write the starting manifest. The returned plan lists the shards to generate."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_directory(out)
    try:
        spec = spec.resolved(info.truncation_psi)
        ident = identity(info, spec)
        mpath = out / MANIFEST
        old = _read_manifest_file(mpath) if mpath.exists() else None
        if old is not None and old.get("identity") != ident:
            raise SettingsMismatch(f"{mpath}: {out} already holds a dataset generated with different "
                                   f"settings ({_diff(old.get('identity') or {}, ident)}); use another output "
                                   "directory, or repeat the original arguments to resume it")
        for tmp in list(out.glob(f".{SHARD_GLOB}.tmp-*")) + list(out.glob(f".{MANIFEST}.tmp-*")):
            tmp.unlink(missing_ok=True)  # a killed writer's leftovers: we hold the lock, nobody else writes
        recorded = {s["file"]: s for s in (old or {}).get("shards", [])}
        done, missing, replaced = {}, [], []
        for i in range(spec.num_shards):
            path = out / shard_name(i)
            if not path.exists():
                missing.append(i)
                continue
            try:
                entry = recorded.get(path.name)
                if entry is not None and entry.get("sha256") == sha256_file(path):
                    done[i] = entry  # as the complete manifest recorded it
                else:
                    done[i] = check_shard(path, ident, i)
            except SettingsMismatch:
                raise
            except DatasetError as e:  # corrupt: rows are a function of the seed, so regenerate
                if warn:
                    warn(f"{e}; regenerating it")
                replaced.append(path.name)
                missing.append(i)
        schema = dataset_schema(info.true_masks)
        manifest = {
            "format": DATASET_FORMAT, "status": "incomplete", "identity": ident,
            "config": {**spec.to_dict(), "annotator": info.path, "generator": info.generator_spec},
            "class_names": list(info.class_names), "num_classes": info.num_classes,
            "schema": schema_record(schema), "num_images": spec.num_images, "shard_size": spec.shard_size,
            "num_shards": spec.num_shards, "rows": None,
            "filter": {"min_confidence": spec.min_confidence, "max_entropy": spec.max_entropy},
            **info.record(), "code_version": code_version(),
        }
        if missing or old is None or old.get("status") != "complete":
            write_manifest(out, manifest)
        return Plan(out=out, info=info, spec=spec, manifest=manifest, done=done, missing=missing,
                    replaced=replaced, _lock=lock)
    except BaseException:
        lock.close()
        raise


# ------------------------------------------------------------------------------------------ reading


@dataclass
class ShardDataset:
    """A verified dataset directory: its manifest and shard files, in seed order."""

    directory: Path
    manifest: dict[str, Any]
    files: list[Path]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def has_true_masks(self) -> bool:
        return any(f["name"] == "true_mask" for f in self.manifest["schema"])


def check_classes(manifest_path: Path, class_names: Sequence[str], expected: Sequence[str] | int | None,
                  what: str = "the segmentor") -> None:
    if expected is None:
        return
    n = expected if isinstance(expected, int) else len(expected)
    if n != len(class_names) or (not isinstance(expected, int) and list(expected) != list(class_names)):
        shown = f"{n} classes" if isinstance(expected, int) else f"{n} classes {list(expected)}"
        raise DatasetError(f"{manifest_path}: the dataset has {len(class_names)} classes {list(class_names)}, "
                           f"but {what} expects {shown}")


def open_dataset(directory: str | os.PathLike, class_names: Sequence[str] | int | None = None,
                 checksums: bool = True) -> ShardDataset:
    """Check a dataset directory against its manifest before anything trains on it: complete, every shard
    present with its recorded size and sha256 (``checksums``), row counts and identity in each footer, and,
    when given, the class names (or count) a segmentor expects. Errors name the offending file."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise DatasetError(f"{mpath}: no dataset manifest (is {directory} a `lagm generate` output directory?)")
    manifest = _read_manifest_file(mpath)
    if manifest.get("status") != "complete":
        raise DatasetError(f"{mpath}: generation did not finish; run the same `lagm generate` command again to "
                           "complete it")
    check_classes(mpath, manifest["class_names"], class_names)
    files = []
    for s in manifest["shards"]:
        path = directory / s["file"]
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in {mpath} is missing")
        size = path.stat().st_size
        if size != s["bytes"]:
            raise DatasetError(f"{path}: {size} bytes, but {mpath} records {s['bytes']} (truncated or replaced?)")
        if checksums and sha256_file(path) != s["sha256"]:
            raise DatasetError(f"{path}: sha256 differs from {mpath}: the shard is corrupt (delete it and re-run "
                               "the same `lagm generate` command to regenerate it)")
        try:
            meta = pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{path}: unreadable parquet footer ({e})") from e
        if meta.num_rows != s["rows"]:
            raise DatasetError(f"{path}: {meta.num_rows} rows, but {mpath} records {s['rows']}")
        smeta = shard_metadata(pq.read_schema(path), path)
        if smeta.get("identity") != manifest["identity"]:
            raise DatasetError(f"{path}: generated with different settings than {mpath} records "
                               f"({_diff(smeta.get('identity') or {}, manifest['identity'])})")
        files.append(path)
    return ShardDataset(directory, manifest, files)


def read_shard(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns) if columns else None, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: unreadable or corrupt parquet shard ({e})") from e


def check_labels(labels: torch.Tensor, num_classes: int, where: Any) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DatasetError(f"{where}: label value {int(labels.max())} is not a class id of the dataset's "
                           f"{num_classes} classes")


def load_tensors(dataset: ShardDataset | str | os.PathLike, size: int | None = None,
                 class_names: Sequence[str] | int | None = None, mask: str = "label"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ([N, 3, size, size] in [-1, 1]) and masks ([N, size, size] int64; ``mask`` = "label" for
    the annotator's, "true_mask" for the embedded world's truth) in seed order, shard by shard."""
    ds = dataset if isinstance(dataset, ShardDataset) else open_dataset(dataset, class_names)
    images, masks = [], []
    for path in ds.files:
        t = read_shard(path, ["image", mask])
        if t.num_rows == 0:
            continue
        images.append(decode_images(t.column("image").to_pylist(), size))
        m = decode_masks(t.column(mask).to_pylist(), size)
        check_labels(m, ds.num_classes, path)
        masks.append(m)
    if not images:
        raise DatasetError(f"{ds.directory / MANIFEST}: the dataset holds no rows (all filtered?)")
    return torch.cat(images), torch.cat(masks)


def sample_grid(dataset: ShardDataset | str | os.PathLike, n: int = 8):
    """Picture of the first ``n`` rows: image, annotator label, true mask (embedded world), for MLflow."""
    from .viz import colorize, labelled_grid

    ds = dataset if isinstance(dataset, ShardDataset) else open_dataset(dataset, checksums=False)
    C = ds.num_classes
    cols: dict[str, list] = {"image": [], "annotator label": []}
    if ds.has_true_masks:
        cols["true mask"] = []
    for path in ds.files:
        t = read_shard(path, ["image", "label"] + (["true_mask"] if ds.has_true_masks else []))
        for row in t.slice(0, n - len(cols["image"])).to_pylist():
            cols["image"].append(decode_png(row["image"]))
            cols["annotator label"].append(colorize(decode_png(row["label"]), C))
            if ds.has_true_masks:
                cols["true mask"].append(colorize(decode_png(row["true_mask"]), C))
        if len(cols["image"]) >= n:
            break
    res = cols["image"][0].shape[0] if cols["image"] else 64
    return labelled_grid(cols, ds.class_names, scale=max(1, 128 // res))
