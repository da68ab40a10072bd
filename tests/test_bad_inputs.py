"""A battery of user mistakes and hostile files through the `lagm` command's own entry point: each ends with
exit status 2, one line on stderr that names the key or file, no traceback, nothing half-written, no MLflow
run left behind, and (for sweeps) before Ray starts."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import lagm_cli, tiny_overrides, tiny_sweep

from lagm_ray.methods import load_config


class Evil:
    """Pickled, this asks the loader to call os.system: a weights-only loader must refuse to."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def assert_user_error(res, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_half_written(root: Path) -> None:
    temps = [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert not temps, temps


@pytest.fixture
def tiny(tiny_generator_path, tmp_path):
    """A tiny config file (tracked in tmp_path/mlflow.db) and a helper to run `lagm train` on it."""
    cfg = load_config(None, tiny_overrides(tiny_generator_path, tmp_path, **{"tracking.enabled": True}))
    path = tmp_path / "tiny.yaml"
    path.write_text(cfg.to_yaml())

    def train(*extra: str):
        return lagm_cli(["train", "-c", path, *extra])
    return path, train


def write_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_GENERATORS = {
    "text": (b"this is not a checkpoint\n", "gen.pt"),
    "empty": (b"", "gen.pt"),
    "png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "gen.pt"),
    "gzip": (b"\x1f\x8b\x08\x00" + b"\0" * 64, "gen.pkl"),
}


@pytest.mark.parametrize("kind", sorted(BAD_GENERATORS))
def test_train_refuses_an_unreadable_generator_file(tiny, tmp_path, kind):
    content, name = BAD_GENERATORS[kind]
    gen = write_file(tmp_path / name, content)
    _, train = tiny
    assert_user_error(train("--set", f"generator.checkpoint={gen}"), str(gen))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_train_refuses_a_truncated_or_formatless_or_hostile_generator(tiny, tmp_path, tiny_generator_path):
    _, train = tiny
    whole = Path(tiny_generator_path).read_bytes()
    truncated = write_file(tmp_path / "truncated.pt", whole[: len(whole) // 2])
    assert_user_error(train("--set", f"generator.checkpoint={truncated}"), str(truncated))
    formatless = tmp_path / "formatless.pt"
    torch.save({"weights": torch.zeros(2)}, formatless)
    assert_user_error(train("--set", f"generator.checkpoint={formatless}"), str(formatless), "format")
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "x", "payload": Evil(marker)}, hostile)
    assert_user_error(train("--set", f"generator.checkpoint={hostile}"), str(hostile), "refused")
    hostile_pkl = write_file(tmp_path / "hostile.pkl", pickle.dumps(Evil(marker), protocol=2))
    assert_user_error(train("--set", f"generator.checkpoint={hostile_pkl}"), str(hostile_pkl))
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_train_refuses_a_generator_that_does_not_fit_the_data(tiny):
    _, train = tiny
    assert_user_error(train("--set", "data.resolution=64"), "data.resolution is 64", "32 px")
    assert_user_error(train("--set", "data.category=car"), "generator.checkpoint", "classes")


@pytest.mark.parametrize("overrides, needle", [
    (["--set", "train.bogus=1"], "train.bogus"),
    (["--set", "train.K=0"], "train.K"),
    (["--set", "segmentor.kind=vgg"], "segmentor.kind"),
    (["--set", "data.dataset=celebamask-hq"], "data.root"),
    (["--set", "data.dataset=celebamask-hq", "--set", "data.root=/no/such/folder"], "data.root"),
    (["--set", "segmentor.init=/no/such/weights.pt"], "segmentor.init"),
    (["--set", "train.method=lagm_typo"], "train.method"),
])
def test_train_refuses_bad_config_values_naming_the_key(tiny, tmp_path, overrides, needle):
    _, train = tiny
    assert_user_error(train(*overrides), needle)
    assert not (tmp_path / "runs").exists()


def test_train_refuses_a_missing_or_broken_config_file(tmp_path):
    assert_user_error(lagm_cli(["train", "-c", tmp_path / "none.yaml"]), "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {K: [\n")
    assert_user_error(lagm_cli(["train", "-c", broken]), "broken.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n")
    assert_user_error(lagm_cli(["train", "-c", listed]), "list.yaml")


def test_train_refuses_unwritable_output_and_tracking_locations_before_any_work(tiny, tmp_path):
    _, train = tiny
    blocker = write_file(tmp_path / "a_file", b"x")
    t0 = time.perf_counter()
    assert_user_error(train("--set", f"run.output_dir={blocker}/runs"), "run.output_dir", str(blocker))
    assert_user_error(train("--set", f"tracking.uri=sqlite:///{blocker}/mlflow.db"), "tracking.uri", str(blocker))
    assert_user_error(train("--set", "tracking.uri=sqlite:////proc/lagm/mlflow.db"), "tracking.uri")
    assert time.perf_counter() - t0 < 30  # refused at once, not after a training
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_refuses_a_missing_broken_or_foreign_checkpoint(tiny, tmp_path):
    path, train = tiny
    assert_user_error(train("--resume", tmp_path / "none.pt"), "none.pt")
    broken = write_file(tmp_path / "broken.pt", b"PK\x03\x04 truncated zip")
    assert_user_error(train("--resume", broken), str(broken))
    best = tmp_path / "best.pt"
    torch.save({"format": "lagm_ray.best/v1"}, best)
    assert_user_error(train("--resume", best), str(best), "last.pt")


def test_resume_refuses_a_checkpoint_of_other_shapes_naming_the_key(tiny, tmp_path):
    path, train = tiny
    assert train("--no-track").returncode == 0
    last = tmp_path / "runs" / "tiny" / "last.pt"
    before = last.read_bytes()
    line = assert_user_error(train("--no-track", "--set", "segmentor.width=8", "--resume", "auto"),
                             "segmentor.width=4", str(last))
    assert "8" in line
    assert_user_error(train("--no-track", "--set", "train.method=supervised", "--resume", "auto"), "train.method")
    assert last.read_bytes() == before  # the refused resume wrote nothing over it
    assert_nothing_half_written(tmp_path)


def test_evaluate_refuses_bad_checkpoints(tmp_path):
    assert_user_error(lagm_cli(["evaluate", tmp_path / "none.pt"]), "none.pt")
    text = write_file(tmp_path / "text.pt", b"hello")
    assert_user_error(lagm_cli(["evaluate", text]), str(text), "not a torch checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"format": "something/v1"}, other)
    assert_user_error(lagm_cli(["evaluate", other]), str(other), "something/v1")


def test_quickstart_refuses_bad_seeds():
    assert_user_error(lagm_cli(["quickstart", "--seeds", "a,b"]), "--seeds", "a,b")
    assert_user_error(lagm_cli(["quickstart", "--seeds", ","]), "--seeds")


def test_generate_refuses_bad_options_and_outputs(tmp_path):
    out_file = write_file(tmp_path / "out", b"keep me")
    assert_user_error(lagm_cli(["generate", "--annotator", tmp_path / "none", "--num-images", "4",
                                "--out", tmp_path / "ds", "--local", "--no-track"]), "none")
    assert_user_error(lagm_cli(["generate", "--annotator", tmp_path, "--num-images", "0",
                                "--out", tmp_path / "ds", "--local", "--no-track"]), "--num-images")
    res = lagm_cli(["generate", "--annotator", tmp_path / "none", "--num-images", "4", "--out", out_file,
                    "--local", "--no-track"])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert out_file.read_bytes() == b"keep me"


def test_downstream_refuses_a_missing_shard_folder(tmp_path):
    assert_user_error(lagm_cli(["downstream", tmp_path / "none"]), "none")


@pytest.mark.parametrize("content, needle", [
    (None, "none.yaml"),
    ("name: x\nspace: {train.K: [\n", "invalid YAML"),
    ("- a list\n", "mapping"),
    ("name: x\nspace: {train.K: {grid: [1]}}\nsearcher: grid\nmetric: best/val_fg_mIoU\n", "metric"),
    ("name: x\nspace: {train.Kk: {grid: [1]}}\nsearcher: grid\n", "train.Kk"),
])
def test_sweep_refuses_bad_files_before_ray_starts(tmp_path, content, needle):
    import ray

    path = tmp_path / "none.yaml"
    if content is not None:
        path = tmp_path / "sweep.yaml"
        path.write_text(content)
    assert_user_error(lagm_cli(["sweep", path, "--quick"]), needle)
    assert not ray.is_initialized()


def test_sweep_checks_every_swept_value_against_the_generator_before_ray(tiny_generator_path, tmp_path):
    """data.resolution 64 is not a block of the 32 px generator: refused in the driver, no trial started."""
    import ray

    spec = tiny_sweep(tmp_path, tiny_generator_path, space={"data.resolution": {"grid": [16, 64]}})
    t0 = time.perf_counter()
    assert_user_error(lagm_cli(["sweep", spec, "--storage-path", tmp_path / "ray"]), "data.resolution is 64")
    assert time.perf_counter() - t0 < 30
    assert not ray.is_initialized() and not (tmp_path / "ray").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no parent run opened


def test_sweep_refuses_an_unwritable_storage_path(tiny_generator_path, tmp_path):
    import ray

    spec = tiny_sweep(tmp_path, tiny_generator_path)
    blocker = write_file(tmp_path / "a_file", b"x")
    assert_user_error(lagm_cli(["sweep", spec, "--storage-path", blocker / "ray"]), "--storage-path", str(blocker))
    assert not ray.is_initialized()


def test_the_console_script_gives_one_line_and_debug_gives_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "lagm_ray.cli"]
    plain = subprocess.run(cmd + ["train", "-c", "none.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        "error: none.yaml: cannot read config file (No such file or directory)"]
    debug = subprocess.run(cmd + ["--debug", "train", "-c", "none.yaml"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    usage = subprocess.run(cmd + ["train", "--no-such-flag"], cwd=tmp_path, capture_output=True, text=True)
    assert usage.returncode == 2 and "No such option" in usage.stderr and "Traceback" not in usage.stderr


def test_a_generator_pt_describing_a_huge_network_is_refused_before_anything_is_built(tiny, tmp_path):
    """A lagm_ray .pt is data too: its init_kwargs are bounded as an NVlabs pickle's are, before
    Generator(**init_kwargs) could allocate (img_resolution 65536 would ask for tens of GB)."""
    import resource

    from conftest import TINY_G

    from lagm_ray.synthetic import GENERATOR_FORMAT

    _, train = tiny
    for name, kwargs, needle in [
        ("huge.pt", dict(TINY_G, img_resolution=65536), "img_resolution=65536"),
        ("wide.pt", dict(TINY_G, channel_base=1 << 24, channel_max=1 << 14, img_resolution=4096), "GiB"),
        ("odd.pt", dict(TINY_G, input_mode="exec"), "input_mode"),
        ("extra.pt", dict(TINY_G, evil=1), "evil"),
    ]:
        path = tmp_path / name
        torch.save({"format": GENERATOR_FORMAT, "init_kwargs": kwargs, "state_dict": {}, "meta": {}}, path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        assert_user_error(train("--set", f"generator.checkpoint={path}"), str(path), needle)
        assert time.perf_counter() - t0 < 5
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 2**30


def test_the_size_bound_counts_every_tensor_of_the_toy_generators():
    from lagm_ray.models.generator import Generator
    from lagm_ray.models.nvlabs_import import generator_numel
    from lagm_ray.synthetic import read_generator_checkpoint

    for category in ("faces", "car"):
        kwargs = read_generator_checkpoint(f"embedded:{category}")[1]["init_kwargs"]
        assert kwargs.get("input_mode") == "w"
        G = Generator(**kwargs)
        assert generator_numel(kwargs) == sum(t.numel() for t in G.state_dict().values())


def test_generate_refuses_an_empty_actor_pool_before_the_progress_bar(tmp_path):
    for flag, value, needle in (("--concurrency", "0", "--concurrency must be >= 1"),
                                ("--cpus-per-actor", "0", "--cpus-per-actor")):
        res = lagm_cli(["generate", "--annotator", tmp_path, "--num-images", "4", "--out", tmp_path / "ds",
                        flag, value, "--no-track"])
        assert_user_error(res, needle)
        assert not (tmp_path / "ds").exists()


def test_data_check_on_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(lagm_cli(["data", "check", tmp_path / "empty", "--dataset", "celebamask-hq"]),
                      str(tmp_path / "empty"))
