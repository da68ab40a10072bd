"""Rows as parquet shards: PNG encoding and decoding, the schema, and one shard generated, written (atomically)
and checked.

Rows. ``seed`` (int64), ``truncation`` (float64), ``image`` (RGB PNG), ``label`` (palette PNG whose pixel
values are class ids, at the image resolution), ``confidence`` (mean over pixels of the annotator's max
softmax probability) and ``entropy`` (mean per-pixel entropy, nats), both at the annotator's own output
resolution; and, for the embedded world, ``true_mask`` (palette PNG). A shard's schema metadata
(``META_KEY``) holds the dataset's identity, the annotator and generator, and the shard's own statistics.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..data.datasets import resize_labels
from ..storage import atomic_path, sha256_file
from ..synthetic import to_size
from ..viz import palette, to_uint8_image
from .label import Labeller
from .spec import (
    DatasetError,
    GenerationSpec,
    SettingsMismatch,
    identity,
    identity_diff,
)

META_KEY = b"lagm_ray"
SHARD_GLOB = "shard-*.parquet"
PNG_LEVEL = 6  # zlib level: fixed, so the same pixels always give the same bytes


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


# ------------------------------------------------------------------------------------------ encoding


def encode_image(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def encode_mask(mask: torch.Tensor, num_classes: int) -> bytes:
    """A palette PNG: pixel values are class ids (decode to ids with ``np.asarray(Image.open(...))``),
    shown in the VOC colours of :func:`lagm_ray.viz.palette` by any image viewer."""
    im = Image.fromarray(mask.numpy().astype(np.uint8))
    im.putpalette(palette(num_classes).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
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


def footer_mismatch(path: Path, entry: dict[str, Any], manifest: str | Path = "the manifest") -> str | None:
    """How a manifest entry disagrees with its shard's parquet footer, or None: the file's row count, and the
    index, seeds, rows and filtered count the shard recorded when it was written. Reads the footer only."""
    try:
        num_rows = pq.read_metadata(path).num_rows
        stats = shard_metadata(pq.read_schema(path), path).get("shard") or {}
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: unreadable parquet footer ({e})") from e
    if num_rows != entry.get("rows"):
        return f"{num_rows} rows, but {manifest} records {entry.get('rows')}"
    for key in ("index", "seeds", "rows", "filtered"):
        if stats.get(key) != entry.get(key):
            return f"the shard records {key} {stats.get(key)!r}, but {manifest} records {entry.get(key)!r}"
    return None


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


def read_shard(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A shard (or some of its columns) with its parquet page checksums verified, or :class:`DatasetError`."""
    try:
        return pq.read_table(path, columns=list(columns) if columns else None, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: unreadable or corrupt parquet shard ({e})") from e


def check_shard(path: Path, expected_identity: dict[str, Any], index: int) -> dict[str, Any]:
    """A shard already on disk, read in full with page checksums verified: its manifest entry, or
    :class:`DatasetError` naming the file."""
    table = read_shard(path)
    meta = shard_metadata(table.schema, path)
    if meta.get("identity") != expected_identity:
        raise SettingsMismatch(f"{path}: this shard was generated with different settings "
                               f"({identity_diff(meta.get('identity') or {}, expected_identity)})")
    stats = meta["shard"]
    if stats.get("index") != index or stats.get("rows") != table.num_rows:
        raise DatasetError(f"{path}: shard metadata says index {stats.get('index')} with {stats.get('rows')} rows, "
                           f"the file is shard {index} with {table.num_rows} rows")
    return {**stats, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
