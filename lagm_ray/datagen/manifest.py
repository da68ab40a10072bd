"""A dataset directory: its manifest, its lock, and the plan of a (re-)run: which shards to keep, which to write.
A dataset directory holds::

    DIR/.manifest.json        identity, schema, class names, shards with row counts and sha256, filtering
    DIR/shard-00000.parquet   the rows of seeds [seed, seed + shard_size), then the next shard_size seeds ...
    DIR/.lock                 held (flock) by the one process writing to DIR; removed when it is done

Only the shards are visible: Hugging Face ``datasets`` (``load_dataset("parquet", data_dir=DIR)``) reads
every file of a directory except hidden ones, and pyarrow, pandas and Ray Data skip names starting with a
dot or an underscore. Directories written before the manifest was hidden hold ``_manifest.json``
(``LEGACY_MANIFEST``): they still open and resume, and the next ``lagm generate`` into one renames it.

Safety. A shard is written under a temporary name and renamed (never half-written); the manifest is
written when generation starts (``status: incomplete``, so a different command into the same directory is
refused even after a kill) and again when it ends. A re-run writes only missing shards; shards on disk are
checked (parquet page checksums, their recorded identity) before they are trusted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..storage import atomic_write_text, code_version, sha256_file
from .shards import (
    SHARD_GLOB,
    check_shard,
    dataset_schema,
    footer_mismatch,
    peak_rss_mb,
    schema_record,
    shard_name,
)
from .spec import (
    DATASET_FORMAT,
    AnnotatorInfo,
    DatasetError,
    GenerationSpec,
    SettingsMismatch,
    identity,
    identity_diff,
)

MANIFEST = ".manifest.json"
LEGACY_MANIFEST = "_manifest.json"  # before the manifest was hidden from Hugging Face datasets
LOCK = ".lock"


def manifest_path(directory: str | os.PathLike) -> Path:
    """The manifest of ``directory``: ``.manifest.json``, else an older directory's ``_manifest.json``, else
    (neither exists) where a manifest would be written."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists() and (directory / LEGACY_MANIFEST).exists():
        return directory / LEGACY_MANIFEST
    return directory / MANIFEST


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: not a lagm_ray dataset manifest (format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


def check_counts(path: Path, manifest: dict[str, Any]) -> None:
    """A complete manifest's counts agree with its identity and with each other: one entry per shard of its
    GenerationSpec, in order, each for its own seeds, with rows + filtered = its seed count, and totals
    (rows, filtered, num_shards) that are the entries' sums. So a manifest edited by hand, say its row
    count, is refused even though every shard's sha256 still matches. (Each entry against its file's
    footer: :func:`shards.footer_mismatch`.) DatasetError naming ``path`` and the mismatch."""
    try:
        ident = manifest["identity"]
        spec = GenerationSpec(**{f.name: ident[f.name] for f in dataclasses.fields(GenerationSpec)})
        shards = list(manifest["shards"])
        entries = [(int(e["index"]), str(e["file"]), list(e["seeds"]), int(e["rows"]), int(e["filtered"]))
                   for e in shards]
        totals = (manifest["rows"], manifest["filter"]["filtered"], manifest["num_shards"], manifest["num_images"])
    except (KeyError, TypeError, ValueError) as e:  # a GenerationSpec's ConfigError is a ValueError too
        raise DatasetError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    if len(entries) != spec.num_shards or totals[2] != spec.num_shards:
        raise DatasetError(f"{path}: lists {len(entries)} shards (num_shards {totals[2]!r}), but {spec.num_images} "
                           f"images in shards of {spec.shard_size} make {spec.num_shards}")
    if totals[3] != spec.num_images:
        raise DatasetError(f"{path}: records num_images {totals[3]!r}, but its identity says {spec.num_images}")
    for i, (index, file, seeds, rows, filtered) in enumerate(entries):
        r = spec.shard_seeds(i)
        if index != i or file != shard_name(i) or seeds != [r.start, r.stop]:
            raise DatasetError(f"{path}: shard entry {i} is {file} (index {index}, seeds {seeds}), but shard {i} is "
                               f"{shard_name(i)} with seeds [{r.start}, {r.stop}]")
        if rows < 0 or filtered < 0 or rows + filtered != len(r):
            raise DatasetError(f"{path}: {file} records {rows} rows and {filtered} filtered, but holds the "
                               f"{len(r)} seeds [{r.start}, {r.stop})")
    rows, filtered = sum(e[3] for e in entries), sum(e[4] for e in entries)
    if totals[0] != rows:
        raise DatasetError(f"{path}: records {totals[0]!r} rows, but its shard entries add up to {rows} "
                           "(edited by hand?)")
    if totals[1] != filtered:
        raise DatasetError(f"{path}: records {totals[1]!r} filtered images, but its shard entries add up to "
                           f"{filtered} (edited by hand?)")


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
            _unlock_directory(self._lock)
            self._lock = None

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``out/.manifest.json``; an older directory's ``_manifest.json`` goes once the new one is written."""
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out / LEGACY_MANIFEST).unlink(missing_ok=True)


def _lock_directory(out: Path):
    """An exclusive flock on ``out/.lock``, or DatasetError if another process holds it. The holder removes the
    file when it is done (:func:`_unlock_directory`), so a lock taken on a file that has meanwhile been removed
    (opened just before its holder finished) is no lock: it is dropped and the current file locked instead."""
    path = out / LOCK
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise DatasetError(f"{path}: another `lagm generate` is writing to {out}") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(f.fileno())
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            return f
        f.close()


def _unlock_directory(f) -> None:
    """Remove the lock file while still holding it (nobody else can hold it then), then release it."""
    Path(f.name).unlink(missing_ok=True)
    f.close()


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
        mpath = manifest_path(out)
        old = read_manifest(mpath) if mpath.exists() else None
        if old is not None and old.get("identity") != ident:
            raise SettingsMismatch(f"{mpath}: {out} already holds a dataset generated with different "
                                   f"settings ({identity_diff(old.get('identity') or {}, ident)}); use another output "
                                   "directory, or repeat the original arguments to resume it")
        for tmp in [p for name in (SHARD_GLOB, MANIFEST, LEGACY_MANIFEST) for p in out.glob(f".{name}.tmp-*")]:
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
                if (entry is not None and entry.get("sha256") == sha256_file(path)
                        and footer_mismatch(path, entry) is None):
                    done[i] = entry  # as the complete manifest recorded it (and its file's footer agrees)
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
        _unlock_directory(lock)
        raise
