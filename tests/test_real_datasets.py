"""Pascal-Horse / Pascal-Aeroplane, DatasetGAN's Car-20 / Cat-16 / Face-34 and CGPart cars, read from
tiny fixtures written here in each release's exact on-disk layout, with hand-placed parts so the
expected merged classes, crops, folds and check() reports are known."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from lagm_ray.config import DataConfig
from lagm_ray.data import cgpart
from lagm_ray.data import datasetgan_sets as dg
from lagm_ray.data import pascal_part as pp
from lagm_ray.data.datasets import load_labelled_splits, real_dataset_module
from lagm_ray.errors import ConfigError, DataError
from lagm_ray.methods import load_config

# ---------------------------------------------------------------------------------------------
# Writers for the on-disk formats


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    Image.fromarray(array.astype(np.uint8)).save(path, format="JPEG" if jpeg else "PNG")


MatObject = tuple[str, int, np.ndarray, list[tuple[str, np.ndarray]]]  # class, class_ind, mask, parts


def write_mat(path: Path, imname: str, objects: list[MatObject]) -> None:
    """PASCAL-Part's struct: anno.imname, anno.objects(i).{class, class_ind, mask, parts(j).{part_name, mask}}."""
    objs = np.empty((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for i, (cls, cls_ind, silhouette, parts) in enumerate(objects):
        if parts:
            pa = np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, (name, m) in enumerate(parts):
                pa["part_name"][0, j] = name
                pa["mask"][0, j] = m.astype(np.uint8)
        else:
            pa = np.zeros((0, 0))  # MATLAB's [] for an object without parts
        objs["class"][0, i] = cls
        objs["class_ind"][0, i] = np.array([[cls_ind]], dtype=np.uint8)
        objs["mask"][0, i] = silhouette.astype(np.uint8)
        objs["parts"][0, i] = pa
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno["imname"][0, 0] = imname
    anno["objects"][0, 0] = objs
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"anno": anno})


def write_xml(path: Path, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    h, w = size
    objs = "".join(f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>"
                   f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
                   "</object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
    path.write_text(f"<annotation>{size_xml}{objs}</annotation>")


def region(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def write_voc_image(root: Path, image_id: str, shape: tuple[int, int], mat_objects, xml_objects) -> None:
    write_image(root / "JPEGImages" / f"{image_id}.jpg", np.full(shape + (3,), 200))
    write_mat(root / "Annotations_Part" / f"{image_id}.mat", image_id, mat_objects)
    write_xml(root / "Annotations" / f"{image_id}.xml", shape, xml_objects)


def write_list(root: Path, name: str, lines: list[str]) -> None:
    path = root / "ImageSets" / "Main" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# PASCAL-Part


def horse(shape, rows, cols, parts):
    return ("horse", 13, region(shape, rows, cols), [(n, region(shape, r, c)) for n, r, c in parts])


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("VOC2010")
    s = (120, 100)
    # A: one horse, box 40x60 -> 60x60 square inside the image. Parts head / torso / lfho, a gap of
    # horse pixels without a part (stays background), and a person's head inside the crop (ignored).
    write_voc_image(root, "2008_000001", s, [
        horse(s, (20, 80), (10, 50), [("head", (20, 30), (10, 30)), ("torso", (40, 60), (10, 50)),
                                      ("lfho", (70, 80), (10, 20))]),
        ("person", 15, region(s, (30, 40), (40, 60)), [("head", region(s, (30, 40), (40, 60)))]),
    ], [("horse", (11, 21, 50, 80)), ("person", (41, 31, 60, 40))])
    # B: a horse at the left border: its 60x60 square leaves the image, the clipped 50x60 is zero padded.
    write_voc_image(root, "2008_000002", s, [horse(s, (30, 90), (0, 40), [("torso", (30, 90), (0, 40))])],
                    [("horse", (1, 31, 40, 90))])
    # C: two overlapping horses (both dropped), one separate (kept, k=2), one below 32 px (dropped).
    c = (120, 160)
    write_voc_image(root, "2008_000003", c, [
        horse(c, (10, 70), (10, 60), [("torso", (10, 70), (10, 60))]),
        horse(c, (20, 80), (30, 80), [("torso", (20, 80), (30, 80))]),
        horse(c, (30, 100), (100, 150), [("neck", (30, 60), (100, 150)), ("tail", (60, 100), (100, 150))]),
        horse(c, (105, 118), (120, 140), [("rblleg", (105, 118), (120, 140))]),
    ], [("horse", (11, 11, 60, 70)), ("horse", (31, 21, 80, 80)), ("horse", (101, 31, 150, 100)),
        ("horse", (121, 106, 140, 118))])
    # D (VOC val -> test): one horse with eyes, ears, muzzle (all head) and legs.
    write_voc_image(root, "2008_000004", s, [
        horse(s, (20, 80), (20, 80), [("leye", (20, 25), (20, 25)), ("rear", (25, 30), (20, 25)),
                                      ("muzzle", (30, 35), (20, 25)), ("rfuleg", (60, 80), (20, 40))])],
        [("horse", (21, 21, 80, 80))])
    write_list(root, "horse_train.txt", ["2008_000001  1", "2008_000002  1", "2008_000003  1", "2008_000009 -1",
                                         "2008_000010  0"])
    write_list(root, "horse_val.txt", ["2008_000004  1"])
    # Aeroplane: E1's box is 80x45 (dropped under the 50 px rule), E2's 70x60 with every merged class.
    a = (100, 120)
    write_voc_image(root, "2009_000001", a, [("aeroplane", 1, region(a, (10, 55), (10, 90)),
                                               [("body", region(a, (10, 55), (10, 90)))])],
                    [("aeroplane", (11, 11, 90, 55))])
    plane_parts = [("body", (20, 40), (20, 60)), ("tail", (40, 50), (20, 30)), ("lwing", (40, 50), (30, 40)),
                   ("engine_1", (40, 50), (40, 50)), ("wheel_2", (50, 60), (40, 50)), ("stern", (60, 65), (20, 30))]
    write_voc_image(root, "2009_000002", a, [("aeroplane", 1, region(a, (10, 70), (10, 80)),
                                               [(n, region(a, r, cc)) for n, r, cc in plane_parts])],
                    [("aeroplane", (11, 11, 80, 70))])
    write_list(root, "aeroplane_train.txt", ["2009_000001  1", "2009_000002  1"])
    write_list(root, "aeroplane_val.txt", ["2009_000002  1"])
    return root


def test_pascal_horse_merge_crop_and_filters(voc: Path):
    crops = pp.HORSE.crops(voc, "train")
    assert [c.name for c in crops] == ["2008_000001_0", "2008_000002_0", "2008_000003_2"]
    a, b, c = crops
    # A: square x 0..60, y 20..80 of the image; parts shifted by 20 rows.
    expected = np.zeros((60, 60), dtype=np.uint8)
    expected[0:10, 10:30] = 1  # head
    expected[20:40, 10:50] = 2  # torso
    expected[50:60, 10:20] = 3  # lfho -> legs; the person's head (rows 10..20, cols 40..60) stays 0
    np.testing.assert_array_equal(a.mask, expected)
    # B: clipped to x 0..50 (50 wide) and centred in a 60-wide zero square: 5 zero columns each side.
    assert b.image.shape == (60, 60, 3) and b.mask.shape == (60, 60)
    assert (b.image[:, :5] == 0).all() and (b.image[:, 55:] == 0).all() and (b.image[:, 5:55] > 150).all()
    expected = np.zeros((60, 60), dtype=np.uint8)
    expected[:, 5:45] = 2
    np.testing.assert_array_equal(b.mask, expected)
    # C: only the separate horse (index 2) survives; neck = 4, tail = 5.
    expected = np.zeros((70, 70), dtype=np.uint8)
    expected[0:30, 10:60] = 4
    expected[30:70, 10:60] = 5
    np.testing.assert_array_equal(c.mask, expected)
    (d,) = pp.HORSE.crops(voc, "val")
    assert d.name == "2008_000004_0"
    assert set(np.unique(d.mask)) == {0, 1, 3}  # eyes, ear, muzzle -> head; rfuleg -> legs


def test_pascal_box_rules_are_the_reference_arithmetic():
    # IoU uses the enclosing box as "union" (reference): 39 / (79 * 39) = 0.013 -> both kept.
    assert pp.kept_boxes([(1, 1, 40, 40), (39, 1, 80, 40)], 32) == [0, 1]
    assert pp.kept_boxes([(1, 1, 40, 40), (21, 1, 60, 40)], 32) == []  # IoU 0.33: both dropped
    assert pp.kept_boxes([(1, 1, 32, 40)], 32) == [0] and pp.kept_boxes([(1, 1, 31, 40)], 32) == []
    assert pp.square_box((11, 21, 50, 80), 120, 100) == (0, 20, 60, 80)
    assert pp.square_box((1, 31, 40, 90), 120, 100) == (0, 30, 50, 90)  # clipped at the left border


def test_pascal_aeroplane_merge_and_min_side(voc: Path):
    (crop,) = pp.AEROPLANE.crops(voc, "train")  # 2009_000001's 45 px high box is under 50 px
    assert crop.name == "2009_000002_0"
    # square x 10..80, y 5..75
    expected = np.zeros((70, 70), dtype=np.uint8)
    for rows, cols, cls in [((20, 40), (20, 60), 1), ((40, 50), (20, 30), 2), ((40, 50), (30, 40), 3),
                            ((40, 50), (40, 50), 4), ((50, 60), (40, 50), 5), ((60, 65), (20, 30), 2)]:
        expected[rows[0] - 5:rows[1] - 5, cols[0] - 10:cols[1] - 10] = cls
    np.testing.assert_array_equal(crop.mask, expected)
    assert pp.HORSE.min_side == 32 and pp.AEROPLANE.min_side == 50
    assert pp.AEROPLANE.part_class("engine_12") == 4 and pp.AEROPLANE.part_class("wheel_3") == 5
    assert pp.AEROPLANE.part_class("engine") is None and pp.HORSE.part_class("wheel_1") is None


def test_pascal_load_labelled_splits(voc: Path, monkeypatch):
    monkeypatch.setattr(pp, "NUM_LABELLED", 2)  # the fixture's train/val cut instead of 180
    data = DataConfig(dataset="pascal_horse", root=str(voc), num_labelled=2, resolution=32)
    s = load_labelled_splits(data)
    assert s.class_names == ["background", "head", "torso", "legs", "neck", "tail"]
    assert s.train_images.shape == (2, 3, 32, 32) and s.train_masks.shape == (2, 32, 32)
    assert s.val_images.shape == (1, 3, 32, 32) and s.test_images.shape == (1, 3, 32, 32)
    assert set(s.val_masks.unique().tolist()) == {0, 4, 5}  # the val crop is 2008_000003_2
    assert s.train_images.min() >= -1 and s.train_images.max() <= 1
    with pytest.raises(ConfigError, match="data.num_labelled"):
        load_labelled_splits(DataConfig(dataset="pascal_horse", root=str(voc), num_labelled=3, resolution=32))


def test_pascal_check_reports_every_bad_file(tmp_path: Path):
    s = (120, 100)
    ok = [horse(s, (20, 80), (10, 50), [("torso", (20, 80), (10, 50))])]
    box = [("horse", (11, 21, 50, 80))]
    for image_id in ("good", "nojpg", "corrupt", "badpart", "size", "noxml"):
        write_voc_image(tmp_path, image_id, s, ok, box)
    (tmp_path / "JPEGImages" / "nojpg.jpg").unlink()
    (tmp_path / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    write_mat(tmp_path / "Annotations_Part" / "badpart.mat", "badpart",
              [horse(s, (20, 80), (10, 50), [("lwing", (20, 80), (10, 50))])])
    write_mat(tmp_path / "Annotations_Part" / "size.mat", "size", [horse((50, 50), (0, 50), (0, 50), [])])
    (tmp_path / "Annotations" / "noxml.xml").unlink()
    write_list(tmp_path, "horse_train.txt", [f"{i}  1" for i in ("good", "nojpg", "corrupt", "badpart", "size",
                                                                 "noxml", "nomat")])
    report = real_dataset_module("pascal-horse").check(tmp_path)
    assert report.num_checked == 7 and not report.ok
    expected = {"horse_val.txt": "image list not found", "nojpg.jpg": "image file not found",
                "corrupt.jpg": "corrupt", "badpart.mat": "'lwing'", "size.mat": "50x50",
                "noxml.xml": "not found", "nomat.mat": "not found"}
    assert len(report.problems) == len(expected), report.problems
    for file, what in expected.items():
        assert any(str(tmp_path) in p and file in p and what in p for p in report.problems), (file, report.problems)
    assert report.class_pixels[2] > 0 and len(report.samples) == 1  # the good image's torso


def test_unlabelled_folder(tmp_path: Path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 255  # white centre square, black sides removed by the centre crop
    write_image(tmp_path / "a.png", img)
    write_image(tmp_path / "sub" / "b.webp", img)
    write_image(tmp_path / "sub" / "deeper" / "c.jpg", img)
    (tmp_path / "notes.txt").write_text("not an image")
    data = DataConfig(dataset="pascal_horse", unlabelled_root=str(tmp_path))
    x = real_dataset_module("pascal_horse").load_unlabelled(data, 16, 3)
    assert x.shape == (3, 3, 16, 16) and x.min() > 0.9
    with pytest.raises(DataError, match="4 unlabelled images requested"):
        pp.load_image_folder(tmp_path, 16, 4)
    with pytest.raises(ConfigError, match="data.unlabelled_root"):
        pp.AEROPLANE.load_unlabelled(DataConfig(dataset="pascal_aeroplane"), 16, 1)


# ---------------------------------------------------------------------------------------------
# DatasetGAN


def write_dg_train(folder: Path, i: int, mask: np.ndarray, image_size: tuple[int, int] | None = None) -> None:
    h, w = image_size or mask.shape
    write_image(folder / f"image_{i}.jpg", np.full((h, w, 3), 90))
    np.save(folder / f"image_mask{i}.npy", mask)


@pytest.fixture(scope="module")
def dg_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("dataset_release")
    root = base / "annotation"
    train = root / "training_data" / "car_processed"
    for i in range(3):
        m = np.zeros((12, 16), dtype=np.uint8)
        m[0:6, 0:8] = 3  # 48 px car_body: kept
        m[6:8, 0:5] = 4  # 10 px car_lights: an annotation artefact, becomes background
        # the mask is 12x16 but the image 24x32: same aspect, resized separately as the release does
        write_dg_train(train, i, m, (24, 32))
    test = root / "testing_data" / "car_20_class"
    test.mkdir(parents=True)
    for i in range(11):  # 11 images: folds of 11 // 5 = 2, the last image always in the test set
        write_image(test / f"image_{i}.png", np.full((12, 16, 3), 10 * i))
        np.save(test / f"mask_{i}.npy", np.full((12, 16), i, dtype=np.int64))  # label i marks image i
    return base


def test_cv_split_and_aggregation():
    assert dg.cv_split(11, 5, 0) == ([0, 1], list(range(2, 11)))
    assert dg.cv_split(11, 5, 4) == ([8, 9], [0, 1, 2, 3, 4, 5, 6, 7, 10])
    assert dg.cv_split(20, 5, 2)[0] == [8, 9, 10, 11]
    for folds, fold in ((5, 5), (5, -1), (1, 0), (30, 0)):
        with pytest.raises(ConfigError, match="data.cv_fold"):
            dg.cv_split(11, folds, fold)
    agg = dg.aggregate_folds([{"miou": 0.5, "fg_miou": 0.4}, {"miou": 0.7, "fg_miou": 0.4, "extra": 1.0}])
    assert agg == pytest.approx({"miou_mean": 0.6, "miou_std": 0.1, "fg_miou_mean": 0.4, "fg_miou_std": 0.0})


def test_datasetgan_folds_follow_sorted_paths(dg_root: Path):
    # Sorted as strings: image_0, image_1, image_10, image_2, ... so fold 1 holds images 10 and 2.
    data = DataConfig(dataset="datasetgan_car20", root=str(dg_root), num_labelled=3, resolution=16, cv_fold=1)
    s = load_labelled_splits(data)
    assert s.class_names == dg.CAR20_CLASSES and len(s.class_names) == 20
    assert s.train_images.shape == (3, 3, 16, 16) and s.train_masks.shape == (3, 16, 16)
    assert sorted(s.val_masks[:, 0, 0].tolist()) == [2, 10]
    assert sorted(s.test_masks[:, 0, 0].tolist()) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert set(s.train_masks.unique().tolist()) == {0, 3}  # the 10 px label was cleaned
    folds = [set(load_labelled_splits(DataConfig(dataset="datasetgan_car20", root=str(dg_root / "annotation"),
                                                 num_labelled=1, resolution=16, cv_fold=f)).val_masks[:, 0, 0].tolist())
             for f in range(5)]
    assert set().union(*folds) == set(range(11)) - {9} and sum(map(len, folds)) == 10  # disjoint; image_9 sorts last
    with pytest.raises(ConfigError, match="data.num_labelled"):
        load_labelled_splits(DataConfig(dataset="datasetgan_car20", root=str(dg_root), num_labelled=4))


def test_datasetgan_class_names():
    assert len(dg.CAT16.CLASS_NAMES) == 16 and len(dg.FACE34.CLASS_NAMES) == 34 and len(dg.CAR20.CLASS_NAMES) == 20
    assert real_dataset_module("datasetgan_face34").CLASS_NAMES[17] == "head***hair"
    assert real_dataset_module("datasetgan-cat16") is dg.CAT16


def test_datasetgan_check_reports_every_bad_file(tmp_path: Path):
    train = tmp_path / "training_data" / "cat_processed"
    ok = np.zeros((8, 8), dtype=np.uint8)
    ok[:4] = 5
    write_dg_train(train, 0, ok)
    write_dg_train(train, 1, ok)
    (train / "image_mask1.npy").unlink()  # missing mask
    write_dg_train(train, 2, ok)
    (train / "image_2.jpg").write_bytes(b"garbage")  # corrupt image
    write_dg_train(train, 3, np.full((8, 8), 16, dtype=np.uint8))  # 16 is outside Cat-16's 0..15
    write_dg_train(train, 4, ok, (8, 16))  # 8x8 mask for a 16x8 image
    write_dg_train(train, 5, ok)
    (train / "image_mask5.npy").write_bytes(b"not numpy")
    report = real_dataset_module("datasetgan_cat16").check(tmp_path)
    assert report.num_checked == 6
    expected = {"image_mask1.npy": "not found", "image_2.jpg": "corrupt", "image_mask3.npy": "[16]",
                "image_mask4.npy": "aspect", "image_mask5.npy": "corrupt",
                "cat_16_class": "test folder not found"}
    assert len(report.problems) == len(expected), report.problems
    for file, what in expected.items():
        assert any(file in p and what in p for p in report.problems), (file, report.problems)
    assert report.class_pixels[5] == 32


# ---------------------------------------------------------------------------------------------
# CGPart


def write_render(root: Path, model: str, name: str, seg: np.ndarray) -> None:
    model_id = cgpart.MODELS[model]
    base = root / "CGPart_render" / "car"
    write_image(base / "image" / model_id / name, np.full(seg.shape + (4,), 120))  # RGBA, as Blender writes
    write_image(base / "seg" / model_id / name, seg)


def part(name: str) -> int:
    return cgpart.CGPART_CAR_PARTS.index(name)


@pytest.fixture(scope="module")
def cg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cgpart")
    seg = np.zeros((6, 8), dtype=np.uint8)  # 8 wide, 6 high like the 512x384 renders
    seg[0, :] = part("left_frame")
    seg[1, :] = part("front_left_door")
    seg[2, :] = part("hood")
    seg[3, :] = part("left_quarter_window")
    seg[4, :] = part("back_license_plate")
    for model in cgpart.TRAIN_MODELS:
        write_render(root, model, "000000.png", seg)
    write_render(root, "truck", "000000.png", np.full((6, 8), part("roof"), dtype=np.uint8))
    real = root / "CGPart_real"
    for i in ("n02814533_1", "n02814533_2"):
        write_image(real / "Images" / "car_imagenet_cropped" / f"{i}.JPEG", np.full((10, 6, 3), 50))
        write_image(real / "Annotations_png" / "car_imagenet_cropped" / f"{i}.png",
                    np.full((10, 6), part("front_right_wheel"), dtype=np.uint8))
    (real / "Image_sets").mkdir()
    (real / "Image_sets" / "car_imagenet_val.txt").write_text("n02814533_1\nn02814533_2\n")
    return root


def test_cgpart_merge_and_padding(cg_root: Path):
    assert len(cgpart.CLASS_NAMES) == 15 and len(cgpart.CGPART_CAR_PARTS) == 32
    pairs = cgpart.render_pairs(cg_root)
    image, mask = cgpart.read_pair(*pairs[0])
    assert image.shape == (8, 8, 3) and mask.shape == (8, 8)
    names = cgpart.CLASS_NAMES
    expected = np.zeros((8, 8), dtype=np.uint8)  # one zero row above and below the 6-high render
    for row, cls in enumerate(["car_body", "door", "hood", "window", "licence_plate"], start=1):
        expected[row] = names.index(cls)
    np.testing.assert_array_equal(mask, expected)
    assert (image[0] == 0).all() and (image[7] == 0).all() and (image[1:7] > 100).all()
    lut = cgpart.MERGE_LUT
    assert lut[part("right_frame")] == names.index("car_body")
    assert lut[part("back_windshield")] == names.index("windshield")
    assert lut[part("left_tail_light")] == names.index("tail_light") and lut[0] == 0


def test_cgpart_load_labelled_splits(cg_root: Path):
    s = load_labelled_splits(DataConfig(dataset="cgpart_car", root=str(cg_root), num_labelled=4, resolution=16))
    assert s.class_names == cgpart.CLASS_NAMES
    assert s.train_images.shape == (4, 3, 16, 16)
    # the truck's roof render is never drawn
    assert names_of(s.train_masks) == {"background", "car_body", "door", "hood", "window", "licence_plate"}
    assert s.test_images.shape == (2, 3, 16, 16) and s.val_images.shape == (2, 3, 16, 16)
    assert names_of(s.test_masks) == {"background", "wheel"}
    with pytest.raises(ConfigError, match="data.num_labelled"):  # the truck's render is not in the pool
        load_labelled_splits(DataConfig(dataset="cgpart_car", root=str(cg_root), num_labelled=5, resolution=16))


def names_of(masks) -> set[str]:
    return {cgpart.CLASS_NAMES[v] for v in masks.unique().tolist()}


def test_cgpart_check_reports_every_bad_file(tmp_path: Path):
    seg = np.full((6, 8), part("hood"), dtype=np.uint8)
    for model in cgpart.TRAIN_MODELS:
        write_render(tmp_path, model, "000000.png", seg)
    ids = {m: cgpart.MODELS[m] for m in cgpart.TRAIN_MODELS}
    base = tmp_path / "CGPart_render" / "car"
    write_image(base / "seg" / ids["minivan"] / "000000.png", np.full((6, 8), 40, dtype=np.uint8))  # unknown part 40
    (base / "seg" / ids["suv"] / "000000.png").unlink()
    (base / "image" / ids["sedan"] / "000000.png").write_bytes(b"\x89PNG broken")
    write_image(base / "seg" / ids["wagon"] / "000000.png", np.zeros((6, 6), dtype=np.uint8))
    report = real_dataset_module("cgpart_car").check(tmp_path)
    expected = [(f"seg/{ids['minivan']}/000000.png", "[40]"), (f"seg/{ids['suv']}/000000.png", "not found"),
                (f"image/{ids['sedan']}/000000.png", "corrupt"), (f"seg/{ids['wagon']}/000000.png", "6x6"),
                ("car_imagenet_val.txt", "not found")]
    assert report.num_checked == 4 and len(report.problems) == len(expected), report.problems
    for file, what in expected:
        assert any(file in p and what in p for p in report.problems), (file, report.problems)


def test_config_keys_for_real_sets():
    cfg = load_config(overrides=["data.cv_fold=3", "data.cv_folds=5", "data.unlabelled_root=/lsun/horse"])
    assert (cfg.data.cv_fold, cfg.data.cv_folds, cfg.data.unlabelled_root) == (3, 5, "/lsun/horse")
    assert DataConfig().cv_fold == 0 and DataConfig().unlabelled_root is None


def test_data_report_counts_pixels_and_frequencies():
    from lagm_ray.data.files import DataReport

    r = DataReport("x", "/root", ["bg", "a", "b"], class_pixels=[0, 0, 0])
    image = np.zeros((2, 3, 3), np.uint8)
    r.add(image, np.array([[0, 0, 1], [1, 1, 2]], np.uint8))
    r.add(image, np.array([[2, 2, 2], [2, 0, 0]], np.uint8))
    assert r.class_pixels == [4, 3, 5]
    assert r.class_frequencies() == pytest.approx({"bg": 4 / 12, "a": 3 / 12, "b": 5 / 12})
    assert len(r.samples) == 2 and r.ok


def test_to_tensors_resizes_each_image_and_mask_on_its_own():
    import torch

    from lagm_ray.data.files import to_tensors

    image = np.full((8, 8, 3), 255, np.uint8)  # already the target size
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 2  # right half, at twice the image's size
    x, y = to_tensors([image, np.zeros((4, 4, 3), np.uint8)], [mask, np.ones((4, 4), np.uint8)], 8)
    assert x.shape == (2, 3, 8, 8) and y.shape == (2, 8, 8)
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0)
    assert torch.equal(y[0, :, :4], torch.zeros(8, 4, dtype=torch.long)) and torch.all(y[0, :, 4:] == 2)
    assert torch.all(y[1] == 1)


# ---------------------------------------------------------------------------------------------
# `lagm data check` on a folder that is not the dataset, and on one with many problems


@pytest.mark.parametrize("name,entry", [("pascal_horse", "JPEGImages/"), ("datasetgan_car20", "training_data/"),
                                        ("cgpart_car", "CGPart_render/")])
def test_data_check_of_an_empty_folder_is_one_error_line(tmp_path: Path, name: str, entry: str):
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "lagm_ray.cli", "data", "check", str(tmp_path), "--dataset", name,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"error: {tmp_path}: the folder is empty (a {name} folder holds ")
    assert entry in out.stderr and out.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="holds none of"):
        (tmp_path / "unrelated.txt").write_text("x")
        real_dataset_module(name).check(tmp_path)


def test_problem_lines_list_the_first_twenty_and_end_with_the_summary():
    from lagm_ray.data.check import MAX_LISTED, problem_lines, summary_line
    from lagm_ray.data.files import DataReport

    report = DataReport("celebamask_hq", "/d", ["background", "skin"], num_checked=3000,
                        problems=[f"/d/{i}.jpg: image file not found" for i in range(3000)])
    lines = problem_lines(report)
    assert MAX_LISTED == 20 and len(lines) == 1 + 20 + 2
    assert lines[0] == "3000 problem(s):" and lines[1:21] == report.problems[:20]
    assert lines[21] == "... and 2980 more problem(s), not listed"
    assert lines[-1] == summary_line(report) == "3000 images checked, 3000 problem(s), 0 shown in the picture"
    few = DataReport("x", "/d", ["a"], num_checked=2, problems=["/d/a.png: corrupt", "/d/b.png: corrupt"])
    assert problem_lines(few) == ["2 problem(s):", *few.problems, summary_line(few)]
    assert problem_lines(DataReport("x", "/d", ["a"], num_checked=2)) == ["2 images checked, 0 problem(s), 0 shown "
                                                                          "in the picture"]
