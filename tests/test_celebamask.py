"""CelebAMask-HQ in its exact release layout (tiny: 32 px jpgs, 16 px masks, the release's 2:1 ratio):
the 19 -> 8 merge and painting order against hand-written maps, the Table A.1 split, every bad file
named, `lagm data check` through the CLI, and experiments/label_counts.py on the tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_experiment
from PIL import Image

from lagm_ray.config import DataConfig
from lagm_ray.data import celebamask
from lagm_ray.data.celebamask import CLASS_NAMES, image_path, mask_path
from lagm_ray.data.datasets import load_labelled_splits
from lagm_ray.errors import ConfigError, DataError
from lagm_ray.methods import load_config

ROOT = Path(__file__).resolve().parent.parent
IMG, MSK = 32, 16
TRAIN, VAL, TEST, UNLABELLED = [28000, 28001, 28002], [27500, 27501, 27502], [29500, 29501, 29502], [0, 1]

# Part rectangles on the 16 px mask grid: (rows, cols), half-open. Overlaps chosen to show the
# painting order: hair over skin, hat over hair, eyes over eyeglasses, eyeglasses over the nose,
# cloth over neck. Earring (ear_r) and necklace (neck_l) are absent: no file.
PARTS = {
    "skin": ((2, 14), (2, 14)),
    "hair": ((0, 4), (0, 16)),
    "hat": ((0, 2), (4, 12)),
    "l_brow": ((5, 6), (4, 6)), "r_brow": ((5, 6), (10, 12)),
    "eye_g": ((6, 8), (3, 13)),
    "l_eye": ((6, 8), (4, 6)), "r_eye": ((6, 8), (10, 12)),
    "nose": ((7, 10), (7, 9)),
    "l_ear": ((6, 10), (0, 2)), "r_ear": ((6, 10), (14, 16)),
    "u_lip": ((10, 11), (6, 10)), "mouth": ((11, 12), (6, 10)), "l_lip": ((12, 13), (6, 10)),
    "neck": ((14, 16), (4, 12)), "cloth": ((15, 16), (0, 16)),
}
# The merged map, by hand: . background, E ear, y eye, b eyebrow, s skin, h hair, m mouth, n nose.
EXPECTED = """
hhhh........hhhh
hhhh........hhhh
hhhhhhhhhhhhhhhh
hhhhhhhhhhhhhhhh
..ssssssssssss..
..ssbbssssbbss..
EEssyyssssyyssEE
EEssyyssssyyssEE
EEsssssnnsssssEE
EEsssssnnsssssEE
..ssssmmmmssss..
..ssssmmmmssss..
..ssssmmmmssss..
..ssssssssssss..
................
................
"""
LETTERS = {".": "background", "E": "ear", "y": "eye", "b": "eyebrow", "s": "skin", "h": "hair", "m": "mouth",
           "n": "nose"}


def expected_map() -> np.ndarray:
    rows = EXPECTED.split()
    return np.array([[CLASS_NAMES.index(LETTERS[c]) for c in row] for row in rows], np.int64)


def colour(i: int) -> tuple[int, int, int]:
    """A flat colour per file index, so a loaded image shows which file it came from."""
    return (20 + (i * 37) % 200, 20 + (i * 11) % 200, 128)


def write_image(root: Path, i: int, size: int = IMG) -> None:
    path = image_path(root, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour(i), np.uint8)).save(path, quality=95)


def write_mask(root: Path, i: int, part: str, mask: np.ndarray, mode: str = "L") -> Path:
    path = mask_path(root, i, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8))
    im.convert(mode).save(path)
    return path


def part_mask(part: str, size: int = MSK) -> np.ndarray:
    (r0, r1), (c0, c1) = PARTS[part]
    m = np.zeros((MSK, MSK), np.uint8)
    m[r0:r1, c0:c1] = 255
    return np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST)) if size != MSK else m


def write_face(root: Path, i: int) -> None:
    write_image(root, i)
    for part in PARTS:
        m = part_mask(part)
        if part == "skin":
            write_mask(root, i, part, m, "RGB")  # three equal channels, as some release masks are
        elif part == "nose":
            write_mask(root, i, part, m // 255)  # 0/1 masks are binary too
        else:
            write_mask(root, i, part, m)


def make_tree(root: Path) -> Path:
    for i in TRAIN + VAL + TEST:
        write_face(root, i)
    for i in UNLABELLED:
        write_face(root, i)
    return root


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("celebamask") / "CelebAMask-HQ")


@pytest.fixture
def tree(clean_tree, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(clean_tree, tmp_path / "CelebAMask-HQ"))


def data_config(root: Path, n: int = 3, val: int = 3, test: int = 3) -> DataConfig:
    return DataConfig(dataset="celebamask_hq", root=str(root), num_labelled=n, resolution=32, seg_resolution=16,
                      num_val=val, num_test=test)


# ---------------------------------------------------------------------------------------------
# Layout, merge, split


def test_paths_follow_the_release_layout(tmp_path):
    assert image_path(tmp_path, 5) == tmp_path / "CelebA-HQ-img" / "5.jpg"
    assert mask_path(tmp_path, 5, "skin") == tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "00005_skin.png"
    assert mask_path(tmp_path, 1999, "hair") == tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "01999_hair.png"
    assert mask_path(tmp_path, 2000, "hair") == tmp_path / "CelebAMask-HQ-mask-anno" / "1" / "02000_hair.png"
    assert mask_path(tmp_path, 28000, "l_eye") == tmp_path / "CelebAMask-HQ-mask-anno" / "14" / "28000_l_eye.png"
    assert mask_path(tmp_path, 27999, "nose") == tmp_path / "CelebAMask-HQ-mask-anno" / "13" / "27999_nose.png"


def test_table_a1_split_in_file_indices():
    # Table A.1 numbers images 1..30,000; files are 0..29,999.
    assert celebamask.split_ids("train", 2) == [28000, 28001]
    assert celebamask.split_ids("train")[-1] == 29499 and len(celebamask.split_ids("train")) == 1500
    assert celebamask.split_ids("val")[0] == 27500 and celebamask.split_ids("val")[-1] == 27999
    assert celebamask.split_ids("test")[0] == 29500 and celebamask.split_ids("test")[-1] == 29999
    assert celebamask.split_ids("unlabelled")[-1] == 27999
    with pytest.raises(ConfigError, match="1500"):
        celebamask.split_ids("train", 1501)


def test_merge_table():
    merged = {p: CLASS_NAMES[v] for p, v in zip(celebamask.PARTS, celebamask.MERGE_LUT[1:])}
    assert merged == {"skin": "skin", "nose": "nose", "eye_g": "skin", "l_eye": "eye", "r_eye": "eye",
                      "l_brow": "eyebrow", "r_brow": "eyebrow", "l_ear": "ear", "r_ear": "ear", "mouth": "mouth",
                      "u_lip": "mouth", "l_lip": "mouth", "hair": "hair", "hat": "background",
                      "ear_r": "background", "neck_l": "background", "neck": "background", "cloth": "background"}


def test_merged_mask_and_painting_order(clean_tree):
    image, mask = celebamask.read_sample(clean_tree, 28000)
    assert image.shape == (IMG, IMG, 3) and mask.shape == (MSK, MSK)
    np.testing.assert_array_equal(mask, expected_map())
    # the zero-padded folder 0 of the unlabelled range reads the same way
    np.testing.assert_array_equal(celebamask.read_sample(clean_tree, 1)[1], expected_map())


def test_load_splits_picks_the_first_n_of_each_range(clean_tree):
    sp = load_labelled_splits(data_config(clean_tree, n=2, val=3, test=1))
    assert sp.class_names == CLASS_NAMES
    assert sp.train_images.shape == (2, 3, 16, 16) and sp.train_masks.shape == (2, 16, 16)
    assert sp.val_images.shape[0] == 3 and sp.test_images.shape[0] == 1
    for images, ids in ((sp.train_images, TRAIN[:2]), (sp.val_images, VAL), (sp.test_images, TEST[:1])):
        for x, i in zip(images, ids):  # each image is its file's flat colour (JPEG: within a few levels)
            rgb = ((x.mean((1, 2)) + 1) * 127.5).numpy()
            assert np.abs(rgb - np.array(colour(i))).max() < 4, (i, rgb)
        assert images.min() >= -1 and images.max() <= 1
    for masks in (sp.train_masks, sp.val_masks, sp.test_masks):
        for m in masks:
            np.testing.assert_array_equal(m.numpy(), expected_map())


def test_masks_are_resized_nearest_to_the_target(clean_tree):
    sp = celebamask.load_splits(data_config(clean_tree, n=1, val=1, test=1), 32)
    assert sp.train_images.shape == (1, 3, 32, 32) and sp.train_masks.shape == (1, 32, 32)
    assert sp.train_masks.dtype == torch.long
    up = np.repeat(np.repeat(expected_map(), 2, 0), 2, 1)  # 16 -> 32 px: each label becomes a 2x2 block
    np.testing.assert_array_equal(sp.train_masks[0].numpy(), up)


def test_load_unlabelled(clean_tree):
    x = celebamask.load_unlabelled(data_config(clean_tree), 16, 2)
    assert x.shape == (2, 3, 16, 16)
    for img, i in zip(x, UNLABELLED):
        assert np.abs(((img.mean((1, 2)) + 1) * 127.5).numpy() - np.array(colour(i))).max() < 4
    with pytest.raises(DataError, match=re.escape(str(image_path(clean_tree, 2)))):
        celebamask.load_unlabelled(data_config(clean_tree), 16, 3)


def test_too_many_images_or_no_root_is_a_config_error(clean_tree, tmp_path):
    with pytest.raises(ConfigError, match="1500"):
        load_labelled_splits(data_config(clean_tree, n=1501))
    with pytest.raises(ConfigError, match="data.root"):
        load_labelled_splits(data_config(tmp_path / "nowhere"))
    cfg = load_config(None, {"data.dataset": "celebamask-hq", "data.root": str(clean_tree), "data.num_labelled": 2,
                             "data.num_val": 1, "data.num_test": 1, "data.resolution": 16})
    assert load_labelled_splits(cfg.data).train_masks.shape == (2, 16, 16)  # either spelling names the dataset


def test_trainer_accepts_it_with_the_embedded_faces_generator(clean_tree, tmp_path):
    # the toy faces generator's classes are LAGM's 8 CelebA classes, so the trainer's class check passes
    from lagm_ray.sweep_spec import CONFIG_DIR
    from lagm_ray.trainer import Trainer

    cfg = load_config(CONFIG_DIR / "quickstart.yaml", {
        "data.dataset": "celebamask-hq", "data.root": str(clean_tree), "data.num_labelled": 2, "data.num_val": 1,
        "data.num_test": 1, "tracking.enabled": False, "run.output_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    assert trainer.class_names == CLASS_NAMES == trainer.source.class_names
    assert trainer.splits.train_images.shape == (2, 3, 32, 32)  # the quickstart's 32 px segmentor input


# ---------------------------------------------------------------------------------------------
# Bad files: each a DataError naming the file


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKS = {
    "missing image": lambda root: (image_path(root, 28001).unlink(), image_path(root, 28001))[1],
    "truncated jpg": lambda root: (truncate(image_path(root, 28001)), image_path(root, 28001))[1],
    "garbage jpg": lambda root: (image_path(root, 28001).write_bytes(b"not a jpeg at all"), image_path(root, 28001))[1],
    "mask with unknown value": lambda root: write_mask(root, 28001, "hair", np.where(part_mask("hair") > 0, 128, 0)),
    "mask size vs image": lambda root: [write_mask(root, 28001, p, part_mask(p, 12)) for p in PARTS][0],
    "masks disagree in size": lambda root: write_mask(root, 28001, "nose", part_mask("nose", 8)),
    "no mask at all": lambda root: (shutil.rmtree(root / "CelebAMask-HQ-mask-anno" / "14"),
                                    mask_path(root, 28000, "skin"))[1],
    "corrupt mask": lambda root: (mask_path(root, 28001, "l_eye").write_bytes(b"\x89PNG\r\n broken"),
                                  mask_path(root, 28001, "l_eye"))[1],
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_bad_files_raise_naming_the_file(tree, case):
    path = BREAKS[case](tree)
    with pytest.raises(DataError) as e:
        load_labelled_splits(data_config(tree))
    assert str(e.value).startswith(str(path)), str(e.value)


def test_real_release_sizes_are_not_an_error(tmp_path):
    # 1024 px images with 512 px masks, as released; and masks the size of their image
    write_image(tmp_path, 28000, size=64)
    for part in PARTS:
        write_mask(tmp_path, 28000, part, part_mask(part, 32))
    image, mask = celebamask.read_sample(tmp_path, 28000)
    assert image.shape[:2] == (64, 64) and mask.shape == (32, 32)
    write_image(tmp_path, 28001, size=16)
    for part in PARTS:
        write_mask(tmp_path, 28001, part, part_mask(part))
    np.testing.assert_array_equal(celebamask.read_sample(tmp_path, 28001)[1], expected_map())


# ---------------------------------------------------------------------------------------------
# `lagm data check` through the real CLI


def lagm(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "lagm_ray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_data_check_clean_tree(clean_tree, tmp_path):
    out = lagm(["data", "check", str(clean_tree), "--dataset", "celebamask-hq", "--limit", "3",
                "--out", str(tmp_path / "pics")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "9 images checked, 0 problem(s)" in out.stdout
    for name in CLASS_NAMES:
        assert name in out.stdout
    png = tmp_path / "pics" / "check_celebamask_hq.png"
    assert png.stat().st_size > 1000
    with Image.open(png) as im:
        assert im.width > 3 * 128 and im.height > 8 * 128  # 8 rows of image | mask | overlay tiles


def test_data_check_lists_every_problem(tree, tmp_path):
    broken = [BREAKS[c](tree) for c in ("truncated jpg", "mask with unknown value")]
    image_path(tree, 27501).unlink()
    broken.append(image_path(tree, 27501))
    broken.append(write_mask(tree, 29502, "nose", part_mask("nose", 8)))  # disagrees with its 16 px skin
    for p in PARTS:  # test image 29500: every mask 12 px for a 32 px image
        write_mask(tree, 29500, p, part_mask(p, 12))
    broken.append(mask_path(tree, 29500, "skin"))  # named: the first mask of the image
    out = lagm(["data", "check", str(tree), "--dataset", "celebamask_hq", "--limit", "3", "--out", str(tmp_path)])
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    start = lines.index(f"{len(broken)} problem(s):")
    problems = lines[start + 1:-1]
    assert lines[-1].startswith("9 images checked, 5 problem(s)")  # the summary comes last
    assert len(problems) == len(broken), out.stdout
    for path in broken:
        assert any(line.startswith(str(path)) for line in problems), (path, problems)
    assert (tmp_path / "check_celebamask_hq.png").exists()  # the readable samples are still drawn


def test_data_check_unknown_dataset_and_missing_root(tmp_path):
    out = lagm(["data", "check", str(tmp_path), "--dataset", "no-such-set"])
    assert out.returncode == 2 and out.stderr.startswith("error: data.dataset: unknown dataset")
    assert "Traceback" not in out.stderr
    out = lagm(["data", "check", str(tmp_path / "absent"), "--dataset", "celebamask-hq"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == (f"error: {tmp_path / 'absent'}: no such folder (a celebamask_hq folder holds "
                          "CelebA-HQ-img/, CelebAMask-HQ-mask-anno/)\n")


def test_data_check_of_an_empty_or_other_folder_is_one_line(tmp_path):
    """Not 30,000 lines (one per missing image and mask) but one, on stderr, naming the folder and what a
    CelebAMask-HQ folder holds."""
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    (other / "JPEGImages").mkdir(parents=True)  # a VOC folder, say
    for root, what in ((empty, "the folder is empty"), (other, "holds none of CelebA-HQ-img/")):
        out = lagm(["data", "check", str(root), "--dataset", "celebamask-hq", "--out", str(tmp_path)])
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(f"error: {root}: {what}") and out.stderr.count("\n") == 1, out.stderr
        assert "CelebAMask-HQ-mask-anno/" in out.stderr
        assert len(out.stdout.splitlines()) <= 1  # the "checking ..." line, no table and no problem list
    assert not list(tmp_path.glob("*.png"))


def test_data_check_missing_mask_folder_is_one_problem(tmp_path):
    (tmp_path / "root" / celebamask.IMAGE_DIR).mkdir(parents=True)
    out = lagm(["data", "check", str(tmp_path / "root"), "--dataset", "celebamask-hq", "--out", str(tmp_path)])
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    start = lines.index("1 problem(s):")
    assert lines[start + 1] == f"{tmp_path / 'root' / celebamask.MASK_DIR}: folder not found (part of the release layout)"
    assert len(lines) < 40  # the table and the one problem, not 15,000 missing masks


# ---------------------------------------------------------------------------------------------
# experiments/label_counts.py on the tree


@pytest.mark.slow
@pytest.mark.ray
def test_label_counts_sweep_on_celebamask(clean_tree, tmp_path, ray_local, monkeypatch, capsys):
    """experiments/label_counts.py's main, in this process on the session's local Ray."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LAGM_STORAGE_PATH", str(tmp_path / "ray"))
    monkeypatch.chdir(tmp_path)
    script = load_experiment("label_counts")
    from lagm_ray.sweep_command import SEARCH_SPACES, main

    argv = ["--dataset", "celebamask-hq", "--root", str(clean_tree), "--quick", "--labels", "3", "--steps", "2",
            "--set", "train.eval_interval=2", "--set", "data.num_val=3", "--set", "data.num_test=3",
            "--set", "eval.num_annotator_samples=2", "--set", f"run.output_dir={tmp_path / 'runs'}"]
    rc = main(SEARCH_SPACES / "label_counts.yaml", script.__doc__, argv, compare=script.compare,
              extra_flags=script.flags, adjust=script.adjust)
    out = capsys.readouterr().out
    assert rc == 0, out[-4000:]
    assert "1 trials (0 failed)" in out, out[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("label_counts_celebamask-quick-labels3").experiment_id],
                                   "tags.`lagm.role` = 'sweep'")
    assert parent.data.tags["lagm.sweep"] == "label_counts_celebamask-quick-labels3"
    (kid,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert kid.data.params["data.num_labelled"] == "3"
    assert kid.data.params["data.dataset"] == "celebamask_hq"
    assert kid.data.params["data.root"] == str(clean_tree)
    assert kid.data.params["generator.checkpoint"] == "embedded:faces"
    assert "result/test/fg_miou" in kid.data.metrics


def label_counts_spec(*argv: str):
    """experiments/label_counts.py's sweep for these flags, without running it."""
    script = load_experiment("label_counts")
    import argparse

    from lagm_ray.sweep_command import SEARCH_SPACES, add_sweep_flags, spec_from_args

    ap = argparse.ArgumentParser()
    add_sweep_flags(ap)
    script.flags(ap)
    args = ap.parse_args(list(argv))
    return script.adjust(spec_from_args(SEARCH_SPACES / "label_counts.yaml", args), args)


def test_label_counts_flags(clean_tree, tmp_path):
    embedded = label_counts_spec("--quick")
    assert embedded.base.data.dataset == "embedded" and embedded.space["data.num_labelled"].values == [2, 10, 30, 150,
                                                                                                       1500]
    s = label_counts_spec("--dataset", "celebamask_hq", "--root", str(clean_tree), "--labels", "2,3",
                          "--set", "data.num_val=3", "--set", "data.num_test=3")
    assert s.base.data.dataset == "celebamask_hq" and s.base.data.root == str(clean_tree)
    assert s.base.generator.checkpoint == "embedded:faces"
    assert s.space["data.num_labelled"].values == [2, 3] and s.name == "label_counts_celebamask-labels2-3"
    assert label_counts_spec("--root", str(clean_tree), "--labels", "2", "--set", "data.num_val=3",
                             "--set", "data.num_test=3").base.data.dataset == "celebamask_hq"
    for argv, needle in ((["--dataset", "celebamask-hq"], "--root"), (["--root", str(tmp_path)], "28000.jpg"),
                         (["--dataset", "pascal"], "celebamask-hq"), (["--labels", "2,x"], "integers")):
        with pytest.raises(ConfigError, match=needle):
            label_counts_spec(*argv)


def test_label_counts_fails_early_without_the_images(clean_tree, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "label_counts.py"), "--root", str(clean_tree), "--quick"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert str(image_path(clean_tree, 28003)) in out.stderr and "--labels" in out.stderr


def test_data_check_lists_the_first_twenty_problems_then_counts_and_summarises(tmp_path):
    root = tmp_path / "root"
    for d in (celebamask.IMAGE_DIR, celebamask.MASK_DIR):
        (root / d).mkdir(parents=True)  # the layout, but not one file in it
    out = lagm(["data", "check", str(root), "--dataset", "celebamask-hq", "--limit", "10", "--out", str(tmp_path)])
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    start = lines.index("60 problem(s):")  # 30 images, each missing its image and its masks
    assert all(line.startswith(str(root)) for line in lines[start + 1:start + 21])
    assert lines[start + 21:] == ["... and 40 more problem(s), not listed",
                                  "30 images checked, 60 problem(s), 0 shown in the picture"]
