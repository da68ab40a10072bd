"""`lagm generate`: labelled synthetic datasets as parquet shards (schema, round trip, determinism, resume
after a kill, clear errors naming the file, filtering, and the downstream protocol from shards)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import lagm_cli, tiny_overrides

from lagm_ray import datagen as dg
from lagm_ray.annotator_runs import describe_annotator, generate_local, load_labeller
from lagm_ray.datagen.shards import uint8_to_images
from lagm_ray.downstream import downstream_from_shards, downstream_metrics
from lagm_ray.errors import ConfigError
from lagm_ray.methods import load_config
from lagm_ray.storage import save_checkpoint, sha256_file
from lagm_ray.trainer import BEST_FORMAT, Trainer
from lagm_ray.viz import to_uint8_image

SPEC = dg.GenerationSpec(num_images=10, shard_size=4, batch_size=3)  # shards of 4, 4 and 2 images


@pytest.fixture(scope="module")
def tiny_run(tiny_generator_path, tmp_path_factory):
    """A LAGM run trained for a few steps on the tiny 32 px generator: (its best.pt, its config)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(None, tiny_overrides(tiny_generator_path, tmp, **{
        "eval.downstream_epochs": 2, "eval.downstream_batch_size": 4}))
    trainer = Trainer(cfg)
    trainer.fit(pictures=False)
    trainer.save_best(tmp / "best.pt")
    return tmp / "best.pt", cfg


@pytest.fixture(scope="module")
def dataset(tiny_run, tmp_path_factory) -> Path:
    """SPEC generated in this process; read-only for the tests (they copy it before breaking it)."""
    out = tmp_path_factory.mktemp("data") / "ds"
    generate_local(tiny_run[0], out, SPEC)
    return out


def manifest(directory: Path) -> dict:
    return json.loads((directory / dg.MANIFEST).read_text())


def shas(directory: Path) -> list[str]:
    return [s["sha256"] for s in manifest(directory)["shards"]]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


SHARDS = ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]


def copy(dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(dataset, out)
    return out


# ------------------------------------------------------------------------------------------ schema


def test_schema_and_round_trip(dataset, tiny_run):
    m = manifest(dataset)
    assert m["status"] == "complete" and m["rows"] == 10 and m["num_shards"] == 3
    assert [s["rows"] for s in m["shards"]] == [4, 4, 2] and [s["seeds"] for s in m["shards"]][2] == [8, 10]
    assert [f["name"] for f in m["schema"]] == ["seed", "truncation", "image", "label", "confidence", "entropy",
                                                "true_mask"]
    assert m["class_names"][0] == "background" and m["num_classes"] == 8
    assert m["annotator"]["sha256"] == sha256_file(tiny_run[0]) and m["generator"]["sha256"]
    assert "lagm_ray.version" in m["code_version"] and m["config"]["batch_size"] == 3
    assert all(s["sha256"] == sha256_file(dataset / s["file"]) for s in m["shards"])

    # The shards open as they are: pandas and pyarrow on the directory (the manifest is skipped).
    df = pd.read_parquet(dataset)
    assert df["seed"].tolist() == list(range(10)) and df["truncation"].eq(1.0).all()
    assert str(df["confidence"].dtype) == "float32" and df["image"].map(type).eq(bytes).all()
    table = pq.read_table(dataset)
    meta = json.loads(pq.read_schema(dataset / "shard-00000.parquet").metadata[dg.META_KEY])
    assert table.num_rows == 10 and meta["identity"] == m["identity"]
    assert meta["annotator"]["sha256"] == m["annotator"]["sha256"]
    assert meta["identity"]["class_names"] == m["class_names"]

    # Every stored row is the in-memory sample of its seed (images up to their 8-bit PNG encoding).
    s = dg.generate_samples(load_labeller(tiny_run[0]), SPEC)
    assert s.seeds.tolist() == df["seed"].tolist()
    for i, row in df.iterrows():
        assert np.array_equal(dg.decode_png(row["image"]), to_uint8_image(s.images[i]))
        assert np.array_equal(dg.decode_png(row["label"]), s.labels[i].numpy())
        assert np.array_equal(dg.decode_png(row["true_mask"]), s.true_masks[i].numpy())
        assert row["confidence"] == s.confidence[i].item() and row["entropy"] == s.entropy[i].item()
    import io

    from PIL import Image

    label = Image.open(io.BytesIO(df["label"][0]))
    assert label.mode == "P" and label.size == (32, 32) and label.getpalette()[:3] == [0, 0, 0]
    assert 0 < df["confidence"].min() and df["confidence"].max() <= 1 and df["entropy"].min() >= 0
    truth = dg.load_tensors(dataset, mask="true_mask")[1]
    assert torch.equal(truth, s.true_masks)


def test_the_package_imports_no_trainer_method_or_evaluation():
    """Data generation labels with the annotator it is handed (lagm_ray.annotator_runs rebuilds a run's): none of
    its files imports the trainer, a method or evaluation, not even inside a function, nor does importing it."""
    import ast

    import lagm_ray.datagen

    banned = ("trainer", "methods", "evaluation")
    for path in Path(lagm_ray.datagen.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not [n for n in names if set(n.split(".")) & set(banned)], (path, names)
    code = "import sys, lagm_ray.datagen; print(*sorted(m for m in sys.modules if m.startswith('lagm_ray')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "lagm_ray.datagen.reader" in loaded
    assert not [m for m in loaded if set(m.split(".")) & set(banned)], loaded


# ------------------------------------------------------------------------------------------ other readers


def hf_load(directory: Path, cache: Path):
    """docs/synthetic-datasets.md's line: the directory as written, then the PNG columns cast to Image."""
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(directory), cache_dir=str(cache))["train"]
    return ds.cast_column("image", datasets.Image()).cast_column("label", datasets.Image())


def test_hugging_face_datasets_opens_the_directory(dataset, tmp_path):
    """``load_dataset("parquet", data_dir=DIR)``: only the shards are data files (the manifest is hidden), every
    row in seed order, and with the documented cast the image decodes to a PIL RGB image and the label to a
    palette image whose pixels are the class ids: the pure reader's tensors, exactly."""
    from PIL import Image

    before = sorted(p.name for p in dataset.iterdir())
    assert dg.MANIFEST in before
    ds = hf_load(dataset, tmp_path / "hf")
    assert ds.column_names == [f["name"] for f in manifest(dataset)["schema"]]
    assert ds["seed"] == list(range(10))
    images, labels = dg.load_tensors(dataset)
    truth = dg.load_tensors(dataset, mask="true_mask")[1]
    for i, row in enumerate(ds):
        assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (32, 32)
        assert torch.equal(uint8_to_images(np.array(row["image"])[None])[0], images[i])
        assert isinstance(row["label"], Image.Image) and row["label"].mode == "P"
        assert torch.equal(torch.as_tensor(np.asarray(row["label"]).astype(np.int64)), labels[i])
        assert torch.equal(torch.as_tensor(dg.decode_png(row["true_mask"]).astype(np.int64)), truth[i])
    assert sorted(p.name for p in dataset.iterdir()) == before  # nothing written into the directory


def shard_columns(directory: Path) -> dict[str, list]:
    """Every column of the shards, in seed order, as the pure reader reads them (page checksums verified)."""
    return {c: sum((dg.read_shard(directory / f).column(c).to_pylist() for f in SHARDS), [])
            for c in dg.read_shard(directory / SHARDS[0]).column_names}


def test_pandas_opens_the_directory(dataset):
    df = pd.read_parquet(dataset)
    assert {c: df[c].tolist() for c in df.columns} == shard_columns(dataset)


def test_pyarrow_dataset_opens_the_directory(dataset):
    import pyarrow.dataset as pds

    ds = pds.dataset(dataset)
    assert ds.files == [str(dataset / f) for f in SHARDS]  # neither the manifest nor anything else
    assert ds.to_table().sort_by("seed").to_pydict() == shard_columns(dataset)


@pytest.mark.ray
def test_ray_data_opens_the_directory(ray_local, dataset):
    df = ray_local.data.read_parquet(str(dataset)).to_pandas().sort_values("seed")
    assert {c: df[c].tolist() for c in df.columns} == shard_columns(dataset)


def test_a_directory_with_the_old_manifest_name_opens_and_resumes(dataset, tiny_run, tmp_path):
    """Directories written before the manifest was hidden hold ``_manifest.json``: they open as before (errors
    name that file), and a re-run resumes them, renaming the manifest, after which Hugging Face opens them."""
    out = copy(dataset, tmp_path)
    (out / dg.MANIFEST).rename(out / dg.LEGACY_MANIFEST)
    assert dg.LEGACY_MANIFEST == "_manifest.json" and dg.manifest_path(out) == out / "_manifest.json"
    ds = dg.open_dataset(out)
    assert ds.rows == 10 and ds.manifest_path == out / "_manifest.json"
    expected = dg.load_tensors(dataset)
    assert all(torch.equal(a, b) for a, b in zip(dg.load_tensors(out), expected))
    with pytest.raises(dg.DatasetError, match=re.escape(str(out / "_manifest.json")) + ": the dataset has 8 classes"):
        dg.open_dataset(out, class_names=5)
    with pytest.raises(dg.SettingsMismatch, match=re.escape(str(out / "_manifest.json")) + ": .* different settings"):
        generate_local(tiny_run[0], out, dg.GenerationSpec(num_images=12, shard_size=4, batch_size=3))
    assert (out / dg.LEGACY_MANIFEST).exists() and not (out / dg.MANIFEST).exists()  # refused: left as it was

    (out / "shard-00001.parquet").unlink()
    m = generate_local(tiny_run[0], out, SPEC)
    assert m["last_run"]["shards_written"] == 1 and m["last_run"]["shards_reused"] == 2
    assert (out / dg.MANIFEST).exists() and not (out / dg.LEGACY_MANIFEST).exists()
    assert shas(out) == shas(dataset) and dg.open_dataset(out).rows == 10
    assert hf_load(out, tmp_path / "hf")["seed"] == list(range(10))


# ------------------------------------------------------------------------------------------ determinism


def test_docs_claim_byte_for_byte_only_at_equal_thread_counts():
    """Generation is byte for byte only at one torch thread count per worker (1 against 2 threads changes
    shard sha256s): wherever the README or the dataset docs say "byte for byte" of generation, the same
    paragraph or list item says so."""
    root = Path(__file__).resolve().parent.parent
    for doc in (root / "README.md", root / "docs" / "synthetic-datasets.md"):
        for block in re.split(r"\n\s*\n|\n(?=- )", doc.read_text()):
            if re.search(r"byte[ -]for[ -]byte", block, re.IGNORECASE):
                assert "thread" in block, (doc.name, block)


def test_same_command_same_rows_and_batch_size_is_identity(dataset, tiny_run, tmp_path):
    generate_local(tiny_run[0], tmp_path / "again", SPEC)
    assert shas(tmp_path / "again") == shas(dataset)  # byte for byte

    # The generator batch changes float rounding (CPU GEMMs), so it is part of the dataset's identity:
    # the same seeds and near-identical labels, but a different dataset.
    other = dg.GenerationSpec(num_images=10, shard_size=4, batch_size=4)
    generate_local(tiny_run[0], tmp_path / "b4", other)
    a, b = pd.read_parquet(dataset), pd.read_parquet(tmp_path / "b4")
    assert a["seed"].tolist() == b["seed"].tolist()
    agree = np.mean([np.mean(dg.decode_png(x) == dg.decode_png(y)) for x, y in zip(a["label"], b["label"])])
    assert agree > 0.99
    with pytest.raises(dg.SettingsMismatch, match=r"\.manifest\.json.*batch_size: 3 there, 4 now"):
        generate_local(tiny_run[0], dataset, other)


@pytest.mark.ray
def test_cli_on_ray_writes_the_same_shards_and_logs_to_mlflow(ray_local, dataset, tiny_run, tmp_path, monkeypatch):
    """Two actors on a real Ray cluster write byte-identical shards to the in-process run's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ray"
    r = lagm_cli(["generate", "--annotator", tiny_run[0].parent, "--num-images", "10", "--shard-size", "4",
                  "--batch-size", "3", "--out", out, "--concurrency", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 rows in 3 shards" in " ".join(r.stdout.split())  # rich wraps at the terminal width
    m = manifest(out)
    assert shas(out) == shas(dataset)
    assert m["last_run"]["executor"] == "ray" and m["last_run"]["concurrency"] == 2
    assert m["last_run"]["worker_peak_rss_mb"] > 0

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = mlflow.search_runs(experiment_names=["lagm-datasets"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["generate.num_images"] == "10" and run.data.params["run.executor"] == "ray"
    assert run.data.metrics["rows"] == 10 and run.data.metrics["run/images_per_s"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {dg.MANIFEST, "samples.png"}
    # the shards as an MLflow dataset: digest from the shards' sha256s, the manifest's own sha256 as a tag
    import hashlib

    from lagm_ray.mlflow_datasets import shards_digest

    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "ray" and inp.dataset.source_type == "local"
    assert inp.dataset.digest == shards_digest(m) and {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "generated"
    assert shards_digest(m) == shards_digest(manifest(dataset))  # the same shards: the same digest
    assert run.data.tags["lagm.manifest_sha256"] == hashlib.sha256((out / dg.MANIFEST).read_bytes()).hexdigest()
    assert listing(out) == [dg.MANIFEST, *SHARDS]  # no lock file, no temp file left behind


# ------------------------------------------------------------------------------------------ resume


def test_a_finished_or_refused_run_leaves_no_lock_file(dataset, tiny_run, tmp_path):
    assert listing(dataset) == [".manifest.json", *SHARDS]
    out = copy(dataset, tmp_path)
    generate_local(tiny_run[0], out, SPEC)  # a re-run that finds everything done
    assert listing(out) == [".manifest.json", *SHARDS]
    with pytest.raises(dg.SettingsMismatch):
        generate_local(tiny_run[0], out, dg.GenerationSpec(num_images=12, shard_size=4, batch_size=3))
    assert listing(out) == [".manifest.json", *SHARDS]


def test_two_generators_on_one_directory_are_refused(tiny_run, tmp_path, monkeypatch):
    """The second writer is refused while the first holds ``.lock``, and may start once the first is done
    (and has removed the file). A writer that opened the file just before the holder removed it does not
    take the lock on the removed file: it locks the current one, here held by a third writer, so is refused."""
    import fcntl

    from lagm_ray.datagen import manifest as dm

    info = describe_annotator(tiny_run[0], SPEC.truncation_psi)
    out = tmp_path / "ds"
    lock = out / dm.LOCK
    with dg.plan(out, info, SPEC):
        assert lock.exists()
        with pytest.raises(dg.DatasetError, match=re.escape(f"{lock}: another `lagm generate` is writing to {out}")):
            dg.plan(out, info, SPEC)
    assert not lock.exists()
    with dg.plan(out, info, SPEC):
        pass
    assert not lock.exists()

    real_flock, third = fcntl.flock, []

    def holder_finishes_then_a_third_locks(f, op):
        if not third:  # between our open() and our flock(): the holder removes the file; a third writer takes it
            lock.unlink()
            third.append(open(lock, "a"))
            real_flock(third[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return real_flock(f, op)

    monkeypatch.setattr(dm.fcntl, "flock", holder_finishes_then_a_third_locks)
    with pytest.raises(dg.DatasetError, match="another `lagm generate` is writing"):
        dg.plan(out, info, SPEC)
    monkeypatch.undo()
    assert lock.exists()  # the third writer's file, untouched
    third[0].close()


def test_rerun_writes_only_the_missing_shard(dataset, tiny_run, tmp_path):
    out = copy(dataset, tmp_path)
    (out / "shard-00001.parquet").unlink()
    stray = out / ".shard-00001.parquet.tmp-999-dead"  # what a killed writer leaves
    stray.write_bytes(b"half a shard")
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard-*.parquet")}
    m = generate_local(tiny_run[0], out, SPEC)
    assert m["last_run"]["shards_written"] == 1 and m["last_run"]["shards_reused"] == 2
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard-*.parquet")
            if p.name in before} == before
    assert not stray.exists() and shas(out) == shas(dataset)


@pytest.mark.slow
def test_killed_run_resumes(tmp_path):
    """SIGKILL a real `lagm generate` mid-run (shipped 64 px faces generator, so it runs for seconds), then
    finish it: only the missing shards are written, the rest are untouched, pandas reads every row."""
    cfg = load_config(None, {"data.resolution": 64, "generator.checkpoint": "embedded:faces", "annotator.width": 8,
                             "segmentor.kind": "unet", "train.matched_blocks": ["All"]})
    from lagm_ray.models.annotator import FPNAnnotator
    from lagm_ray.synthetic import SyntheticSource

    torch.manual_seed(0)
    channels = SyntheticSource.from_spec("embedded:faces").feature_channels()
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"format": BEST_FORMAT, "config": cfg.to_dict(), "step": 0, "metrics": {}, "segmentor": {},
                     "annotator": FPNAnnotator(channels, 8, 8).state_dict()}, ckpt)
    out = tmp_path / "faces"
    args = ["--annotator", str(ckpt), "--num-images", "96", "--shard-size", "4", "--batch-size", "4", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lagm_ray.cli", "generate", "--local", "--no-track", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("shard-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    written = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert 1 <= len(written) < 24, "the run finished before it could be killed"
    assert manifest(out)["status"] == "incomplete"
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: generation did not finish"):
        dg.open_dataset(out)
    before = {n: (out / n).stat().st_mtime_ns for n in written}

    spec = dg.GenerationSpec(num_images=96, shard_size=4, batch_size=4)
    m = generate_local(ckpt, out, spec)
    assert m["last_run"]["shards_reused"] == len(written) and m["last_run"]["shards_written"] == 24 - len(written)
    assert {n: (out / n).stat().st_mtime_ns for n in written} == before
    assert not list(out.glob(".*.tmp-*"))
    assert pd.read_parquet(out)["seed"].tolist() == list(range(96))
    assert dg.open_dataset(out).rows == 96 and dg.open_dataset(out).has_true_masks


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("option,value,message", [
    ("--concurrency", "0", "--concurrency must be >= 1, got 0"),  # Ray would have run one actor
    ("--cpus-per-actor", "0", "--cpus-per-actor must be > 0, got 0.0"),
    ("--num-images", "0", "--num-images must be >= 1, got 0"),
    ("--shard-size", "0", "--shard-size must be >= 1, got 0"),
    ("--batch-size", "-1", "--batch-size must be >= 1, got -1"),
])
def test_generate_refuses_bad_pool_and_sizes_naming_the_option(tiny_run, tmp_path, option, value, message):
    """Through the real CLI: exit 2, one line on stderr naming the option, no traceback, nothing written,
    and refused before Ray starts (a run of one actor would take far longer than this budget)."""
    out = tmp_path / "out"
    args = ["--annotator", str(tiny_run[0].parent), "--num-images", "10", "--shard-size", "4", "--out", str(out),
            "--no-track", option, value]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "lagm_ray.cli", "generate", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == f"error: {message}", r.stdout + r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    # The pool's options are checked by generate_dataset, inside generate_and_log's progress bar, whose
    # first frame (on stderr) may come before the error; nothing else may.
    assert all(line.startswith("generate out ") for line in r.stderr.splitlines()[:-1]), r.stderr
    assert not out.exists() and time.monotonic() - t0 < 60


def test_spec_and_pool_options_are_checked_in_the_library():
    with pytest.raises(ConfigError, match=r"^--concurrency must be >= 1, got -2$"):
        dg.check_workers(-2, 1.0)
    for cpus in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"^--cpus-per-actor must be > 0"):
            dg.check_workers(None, cpus)
    dg.check_workers(None, 0.5)
    dg.check_workers(1, 2.0)
    with pytest.raises(ConfigError, match=r"^--max-entropy must be a number >= 0, got nan$"):
        dg.GenerationSpec(num_images=1, max_entropy=float("nan"))  # would have filtered every image
    with pytest.raises(ConfigError, match=r"^--seed must be >= 0"):
        dg.GenerationSpec(num_images=1, seed=-1)



def test_errors_name_the_file(dataset, tiny_run, tmp_path):
    out = copy(dataset, tmp_path)
    shard1, shard2 = out / "shard-00001.parquet", out / "shard-00002.parquet"
    # one flipped byte in the middle of the largest column chunk (the images): inside a data page whatever
    # else the shard's layout holds, so only the page checksum can catch it
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(shard1).metadata
    chunks = [meta.row_group(0).column(i) for i in range(meta.num_columns)]
    big = max(chunks, key=lambda c: c.total_compressed_size)
    data = bytearray(shard1.read_bytes())
    data[big.data_page_offset + big.total_compressed_size // 2] ^= 0xFF
    shard1.write_bytes(bytes(data))
    with pytest.raises(dg.DatasetError, match=r"shard-00001\.parquet: sha256 differs .* corrupt"):
        dg.open_dataset(out)
    with pytest.raises(dg.DatasetError, match=r"shard-00001\.parquet: unreadable or corrupt"):
        dg.read_shard(shard1)  # the parquet page checksum, without the manifest

    shard1.write_bytes((dataset / shard1.name).read_bytes())
    shard2.write_bytes(shard2.read_bytes()[:-100])
    with pytest.raises(dg.DatasetError, match=r"shard-00002\.parquet: \d+ bytes, but .*/\.manifest\.json records"):
        dg.open_dataset(out)
    with pytest.raises(dg.DatasetError, match=r"shard-00002\.parquet: unreadable"):
        dg.read_shard(shard2)
    shard2.unlink()
    with pytest.raises(dg.DatasetError, match=r"shard-00002\.parquet: shard listed in .* is missing"):
        dg.open_dataset(out)

    # A re-run regenerates the damaged shard (rows are a function of the seed) and says so.
    shard1.write_bytes(shard1.read_bytes()[:-100])
    warnings = []
    m = generate_local(tiny_run[0], out, SPEC, warn=warnings.append)
    assert len(warnings) == 1 and "shard-00001.parquet" in warnings[0]
    assert m["last_run"]["shards_replaced"] == ["shard-00001.parquet"] and shas(out) == shas(dataset)

    with pytest.raises(dg.SettingsMismatch, match=r"\.manifest\.json: .* different settings .*num_images: 10 there"):
        generate_local(tiny_run[0], out, dg.GenerationSpec(num_images=12, shard_size=4, batch_size=3))
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: the dataset has 8 classes .* expects 5 classes"):
        dg.open_dataset(out, class_names=5)
    car = tiny_run[1].replace({"data.category": "car"})
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: the dataset has 8 classes .*data\.category 'car'"):
        downstream_from_shards(out, car)

    m = manifest(out)
    m["status"] = "incomplete"
    (out / dg.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: generation did not finish"):
        dg.open_dataset(out)
    (out / dg.MANIFEST).write_text("{not json")
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: unreadable manifest"):
        dg.open_dataset(out)
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: no dataset manifest"):
        dg.open_dataset(tmp_path)


def edited(directory: Path, edit) -> Path:
    """The directory's manifest after ``edit(manifest)``, written back as a hand edit would be (every sha256 kept)."""
    m = manifest(directory)
    edit(m)
    (directory / dg.MANIFEST).write_text(json.dumps(m, indent=2))
    return directory


def test_a_hand_edited_manifest_is_refused_though_its_checksums_match(dataset, tiny_run, tmp_path):
    out = copy(dataset, tmp_path)
    original = (out / dg.MANIFEST).read_text()
    mpath = re.escape(str(out / dg.MANIFEST))

    def refused(edit, pattern: str) -> None:
        (out / dg.MANIFEST).write_text(original)
        edited(out, edit)
        for checksums in (True, False):
            with pytest.raises(dg.DatasetError, match=pattern):
                dg.open_dataset(out, checksums=checksums)

    def rows(m):
        m["rows"] = 11
    refused(rows, mpath + r": records 11 rows, but its shard entries add up to 10 \(edited by hand\?\)")

    def filtered(m):
        m["filter"]["filtered"] = 2
    refused(filtered, mpath + r": records 2 filtered images, but its shard entries add up to 0")

    def entry_and_total(m):  # consistent with each other, not with the file
        m["shards"][0].update(rows=3, filtered=1)
        m["rows"], m["filter"]["filtered"] = 9, 1
    refused(entry_and_total, r"shard-00000\.parquet: 4 rows, but " + mpath + " records 3$")

    def entry_only(m):
        m["shards"][1]["rows"] = 5
        m["rows"] = 11
    refused(entry_only, mpath + r": shard-00001\.parquet records 5 rows and 0 filtered, but holds the 4 seeds \[4, 8\)")

    def dropped(m):  # the last shard forgotten, the totals made to agree
        m["shards"].pop()
        m["rows"], m["num_shards"] = 8, 2
    refused(dropped, mpath + r": lists 2 shards \(num_shards 2\), but 10 images in shards of 4 make 3")

    def swapped(m):
        m["shards"][0], m["shards"][1] = m["shards"][1], m["shards"][0]
    refused(swapped, mpath + r": shard entry 0 is shard-00001\.parquet")

    def malformed(m):
        del m["shards"][2]["rows"]
    refused(malformed, mpath + r": malformed manifest \(KeyError: 'rows'\)")

    # Through the CLI: one line on stderr naming the manifest, exit 2, no traceback, nothing trained.
    (out / dg.MANIFEST).write_text(original)
    edited(out, rows)
    r = subprocess.run([sys.executable, "-m", "lagm_ray.cli", "downstream", str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stderr == f"error: {out / dg.MANIFEST}: records 11 rows, but its shard entries add up to 10 (edited by hand?)\n"

    # A re-run of the same command does not take the edited entry on trust: its shard's footer has the
    # truth, so the manifest is rewritten right and no shard is regenerated.
    (out / dg.MANIFEST).write_text(original)
    edited(out, entry_and_total)
    m = generate_local(tiny_run[0], out, SPEC)
    assert m["rows"] == 10 and m["shards"][0]["rows"] == 4 and m["last_run"]["shards_written"] == 0
    assert shas(out) == shas(dataset) and dg.open_dataset(out).rows == 10


def test_uncertainty_filtering_is_reported(dataset, tiny_run, tmp_path):
    df = pd.read_parquet(dataset)
    threshold = float(df["confidence"].median())
    spec = dg.GenerationSpec(num_images=10, shard_size=4, batch_size=3, min_confidence=threshold)
    m = generate_local(tiny_run[0], tmp_path / "filtered", spec)
    kept = df[df["confidence"] >= np.float32(threshold)]
    assert 0 < len(kept) < 10
    assert m["rows"] == len(kept) and m["filter"]["filtered"] == 10 - len(kept)
    assert m["filter"]["min_confidence"] == threshold and m["filter"]["kept_fraction"] == len(kept) / 10
    assert sum(s["filtered"] for s in m["shards"]) == 10 - len(kept)
    assert pd.read_parquet(tmp_path / "filtered")["seed"].tolist() == kept["seed"].tolist()

    m = generate_local(tiny_run[0], tmp_path / "entropy",
                          dg.GenerationSpec(num_images=10, shard_size=4, batch_size=3, max_entropy=0.0))
    assert m["rows"] == 0 and m["filter"]["filtered"] == 10 and pd.read_parquet(tmp_path / "entropy").empty


# ------------------------------------------------------------------------------------------ downstream


def test_downstream_from_shards_equals_in_memory(dataset, tiny_run):
    """Same seeds, same mIoU, exactly: the shard round trip (PNG, parquet, decoding, resizing) loses nothing
    beyond the 8-bit images a dataset stores."""
    best, cfg = tiny_run
    from_shards = downstream_from_shards(dataset, cfg)
    samples = dg.generate_samples(load_labeller(best), SPEC)
    images, labels = dg.training_pair(samples, cfg.data.seg_resolution)
    in_memory = downstream_metrics(cfg, images, labels)
    assert from_shards == in_memory and "downstream/test/fg_miou" in from_shards

    # `lagm downstream DIR` takes the annotator run's config from the manifest.
    r = lagm_cli(["downstream", dataset])
    assert r.returncode == 0 and "downstream/test/fg_miou" in r.stdout, r.stdout + r.stderr
    shown = f"{100 * from_shards['downstream/test/fg_miou']:.2f}"
    assert shown in r.stdout
    r = lagm_cli(["downstream", dataset, "--set", "data.category=car"])
    assert r.returncode == 2 and ".manifest.json: the dataset has 8 classes" in r.stderr


@pytest.mark.ray
def test_ray_data_reader_feeds_the_same_tensors(ray_local, dataset, tiny_run):
    """read_parquet -> decode in map_batches -> iter_torch_batches gives the pure reader's tensors, so the
    downstream segmentor it trains is the same one."""
    from lagm_ray.distributed import generate as rdg

    cfg = tiny_run[1]
    fed = []

    def ray_reader(ds, size):
        fed.append(rdg.load_tensors(ds, size))
        return fed[-1]

    assert downstream_from_shards(dataset, cfg, reader=ray_reader) == downstream_from_shards(dataset, cfg)
    images, labels = dg.load_tensors(dataset, cfg.data.seg_resolution)
    assert torch.equal(images, fed[0][0]) and torch.equal(labels, fed[0][1])
    assert images.stride() == fed[0][0].stride()  # the memory layout changes a trained segmentor too
    with pytest.raises(dg.DatasetError, match=r"\.manifest\.json: the dataset has 8 classes"):
        rdg.read_dataset(dataset, class_names=6)
