"""CGPart cars: rendered CAD-model images as out-of-domain labelled data (LAGM Section 4.2, Figure 3).

Layout (LAGM's README: renders made with CGPart's ``render-3d-segmentation`` code, real test images from
CGPart's ``cgpart_real.zip``)::

    root/CGPart_render/car/image/{model_id}/{name}.png   renders (RGB or RGBA)
    root/CGPart_render/car/seg/{model_id}/{name}.png     part labels 0..31 (grey or palette PNG)
    root/CGPart_real/Images/car_imagenet_cropped/{id}.JPEG
    root/CGPart_real/Annotations_png/car_imagenet_cropped/{id}.png
    root/CGPart_real/Image_sets/car_imagenet_val.txt     one id per line

A seg value k in 1..31 is the k-th of CGPart's 31 car parts (``render_seg/depth_to_semseg.py`` writes
argmin-over-parts + 1, 0 outside the car); the names in :data:`CGPART_CAR_PARTS` are LAGM's
``CLASSES['CGPart_car']``. They are merged into the 15 classes of Table A.3 as LAGM's
``cgpart_car_simplify_v0`` does: every car pixel starts as ``car_body`` (so ``left_frame`` /
``right_frame`` are car body) and the named parts override it.

Splits, as LAGM's ``configs/cgpart_car/car_stylegan2_256x192.json``: the labelled set is
``data.num_labelled`` renders (paper: 1000) drawn from the minivan, SUV, sedan and wagon models (the
truck is left out), here by a fixed-seed permutation so runs are repeatable (the reference shuffles
unseeded); the 40 images of CGPart's real ``val`` list are the test set ("the original val split of
CGPart is adopted as test dataset", Appendix A) and, as in the reference config, also the validation set
(there is no other real labelled car set), so checkpoint selection sees the test images.

The renders are 512x384 and the real crops vary; each image is zero-padded to a square (centred, the
padding labelled background, LAGM's ``to_square``) and then resized to the configured size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .datasets import LabelledSplits
from .files import (
    DataReport,
    check_labels,
    check_pairs,
    check_same_size,
    read_image,
    read_label_png,
    to_tensors,
)

CGPART_CAR_PARTS = [
    "background", "back_bumper", "back_left_door", "back_left_wheel", "back_left_window",
    "back_license_plate", "back_right_door", "back_right_wheel", "back_right_window", "back_windshield",
    "front_bumper", "front_left_door", "front_left_wheel", "front_left_window", "front_license_plate",
    "front_right_door", "front_right_wheel", "front_right_window", "front_windshield", "hood",
    "left_frame", "left_head_light", "left_mirror", "left_quarter_window", "left_tail_light",
    "right_frame", "right_head_light", "right_mirror", "right_quarter_window", "right_tail_light",
    "roof", "trunck",
]

CLASS_NAMES = ["background", "back_bumper", "car_body", "door", "front_bumper", "head_light", "hood",
               "licence_plate", "mirror", "roof", "tail_light", "trunck", "wheel", "window", "windshield"]

# Table A.3: merged class -> CGPart parts (anything else on the car is car_body).
MERGE = {
    "back_bumper": ["back_bumper"],
    "door": ["back_left_door", "back_right_door", "front_left_door", "front_right_door"],
    "front_bumper": ["front_bumper"],
    "head_light": ["left_head_light", "right_head_light"],
    "hood": ["hood"],
    "licence_plate": ["back_license_plate", "front_license_plate"],
    "mirror": ["left_mirror", "right_mirror"],
    "roof": ["roof"],
    "tail_light": ["left_tail_light", "right_tail_light"],
    "trunck": ["trunck"],
    "wheel": ["back_left_wheel", "back_right_wheel", "front_left_wheel", "front_right_wheel"],
    "window": ["back_left_window", "back_right_window", "front_left_window", "front_right_window",
               "left_quarter_window", "right_quarter_window"],
    "windshield": ["back_windshield", "front_windshield"],
}

# CGPart's car models (ShapeNet ids); LAGM trains on all but the truck.
MODELS = {
    "minivan": "4ef6af15bcc78650bedced414fad522f",
    "truck": "42af1d5d3b2524003e241901f2025878",
    "suv": "473dd606c5ef340638805e546aa28d99",
    "sedan": "6710c87e34056a29aa69dfdc5532bb13",
    "wagon": "bad0a52f07afc2319ed410a010efa019",
}
TRAIN_MODELS = ["minivan", "suv", "sedan", "wagon"]
SAMPLE_SEED = 0


def merge_lut() -> np.ndarray:
    """CGPart part index (0..31) -> Table A.3 class (0..14)."""
    lut = np.full(len(CGPART_CAR_PARTS), CLASS_NAMES.index("car_body"), dtype=np.uint8)
    lut[0] = 0
    for cls, parts in MERGE.items():
        for p in parts:
            lut[CGPART_CAR_PARTS.index(p)] = CLASS_NAMES.index(cls)
    return lut


MERGE_LUT = merge_lut()


def merge_parts(mask: np.ndarray) -> np.ndarray:
    return MERGE_LUT[mask]


def pad_to_square(array: np.ndarray) -> np.ndarray:
    """Centre the array in a zero square of its longer side (top/left get the smaller half)."""
    h, w = array.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side) + array.shape[2:], dtype=array.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top: top + h, left: left + w] = array
    return out


def render_root(root: str | Path) -> Path:
    return Path(root) / "CGPart_render" / "car"


def real_root(root: str | Path) -> Path:
    return Path(root) / "CGPart_real"


def render_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, seg) of the training models' renders: models in TRAIN_MODELS order, files sorted."""
    base = render_root(root)
    pairs = []
    for model in TRAIN_MODELS:
        folder = base / "image" / MODELS[model]
        if not folder.is_dir():
            raise DataError(f"{folder}: render folder of the {model} model not found")
        pairs += [(p, base / "seg" / MODELS[model] / p.name) for p in sorted(folder.glob("*.png"))]
    return pairs


def real_pairs(root: str | Path, split: str = "val") -> list[tuple[Path, Path]]:
    base = real_root(root)
    listing = base / "Image_sets" / f"car_imagenet_{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing}: image list not found")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return [(base / "Images" / "car_imagenet_cropped" / f"{i}.JPEG",
             base / "Annotations_png" / "car_imagenet_cropped" / f"{i}.png") for i in ids]


def read_pair(image_path: Path, seg_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and merged 15-class mask, both padded to a square."""
    image = read_image(image_path)
    seg = read_label_png(seg_path)
    check_same_size(image, seg, image_path, seg_path)
    check_labels(seg, range(len(CGPART_CAR_PARTS)), seg_path)
    return pad_to_square(image), pad_to_square(merge_parts(seg))


def sample_renders(pairs: list[tuple[Path, Path]], n: int) -> list[tuple[Path, Path]]:
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(pairs))
    return [pairs[i] for i in order[:n]]


def load_pairs(pairs: list[tuple[Path, Path]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for ip, mp in pairs:
        image, mask = read_pair(ip, mp)
        x, y = to_tensors([image], [mask], size)
        images.append(x)
        masks.append(y)
    if not images:
        return to_tensors([], [], size)
    return torch.cat(images), torch.cat(masks)


def load_splits(data: DataConfig, size: int) -> LabelledSplits:
    root = Path(data.root or "")
    renders = render_pairs(root)
    if data.num_labelled > len(renders):
        raise ConfigError(f"data.num_labelled: {data.num_labelled} renders requested, but {render_root(root)} "
                          f"holds {len(renders)} of the {', '.join(TRAIN_MODELS)} models")
    train = load_pairs(sample_renders(renders, data.num_labelled), size)
    test = load_pairs(real_pairs(root, "val"), size)
    return LabelledSplits(list(CLASS_NAMES), *train, *test, *test)


def check(root: str | Path, limit: int | None = None) -> DataReport:
    return check_pairs("cgpart_car", root, CLASS_NAMES, (render_pairs, real_pairs), read_pair, limit,
                       layout=("CGPart_render", "CGPart_real"))
