"""Pascal-Horse and Pascal-Aeroplane: object crops from PASCAL-Part (LAGM Section 4.1, Appendix A).

On-disk layout (a VOC2010 folder with PASCAL-Part's annotations added)::

    root/JPEGImages/{id}.jpg                       VOC2010 images
    root/Annotations/{id}.xml                      VOC boxes (<object><name>, <bndbox>, 1-based)
    root/ImageSets/Main/{horse,aeroplane}_{train,val}.txt   "{id} 1|0|-1" per line
    root/Annotations_Part/{id}.mat                 PASCAL-Part (or root/part_segmentation/Annotations_Part,
                                                   LAGM's layout)

A PASCAL-Part .mat holds ``anno`` (1x1 struct): ``imname`` and ``objects`` (1xN struct: ``class``,
``class_ind``, ``mask`` HxW, ``parts`` 1xP struct of ``part_name`` and ``mask``, or empty).

Construction, as LAGM's reference ``utils/pascal_part_tool.py`` does it (the paper's Appendix A text
differs in two places, noted):

* images: the ids marked ``1`` in ``{cls}_train.txt`` / ``{cls}_val.txt`` that hold an object of the class;
* part map: every part of every object of the class painted with its merged class (Table A.2), in
  file order; object pixels outside any part stay background; a part name outside Table A.2 is an error;
* one crop per VOC box of the class, dropped when its IoU with another box of the class is above 0.05
  (the paper says "smaller than 0.05", the code keeps only boxes overlapping no other by more than 0.05,
  which is what "a single object in a single patch" needs), or when a side is under 32 px (horse) / 50 px
  (aeroplane), or when under 1% of the crop is labelled part;
* the box becomes a square of its longer side around its centre, clipped to the image, and the clipped
  region is centred in a zero square (so the padding is split over both sides, as the code does);
* crops named ``{id}_{k}`` (k = the box's index among the class's boxes) sorted by name: the VOC train
  list's first 180 are the labelled set, the rest validation; the VOC val list's crops are the test set.

Crops are resized to the configured size (paper: 256). ``data.num_labelled`` takes the first N of the
180 (the paper's 2 / 10 / 30 / 100 / 180 settings); validation and test are always whole.

Unlabelled images (``load_unlabelled``): ``data.unlabelled_root``, a flat or nested folder of
jpg/png/webp (the paper centre-crops 200k LSUN horse / airplane images to 256x256), sorted by path.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .datasets import LabelledSplits
from .files import (
    DataReport,
    check_same_size,
    image_tensor,
    read_image,
    require_root,
    to_tensors,
)

NUM_LABELLED = 180  # the reference's train / validation cut of the VOC train crops
MAX_OVERLAP_IOU = 0.05
MIN_LABELLED_FRACTION = 0.01
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LAYOUT = ("JPEGImages", "Annotations", "ImageSets/Main", "Annotations_Part", "part_segmentation")  # any one: a VOC root
T = TypeVar("T")


@dataclass(frozen=True)
class Crop:
    name: str  # "{id}_{k}"
    image: np.ndarray  # [S, S, 3] uint8, S = the box's longer side
    mask: np.ndarray  # [S, S] uint8 merged classes


@dataclass
class PascalPartSet:
    """One PASCAL-Part category with its Table A.2 merge; provides the real-dataset interface."""

    voc_class: str
    CLASS_NAMES: list[str]
    exact_parts: dict[str, int]  # part name -> merged class
    numbered_parts: dict[str, int] = field(default_factory=dict)  # "engine" matches engine_1, engine_2, ...
    min_side: int = 32

    def part_class(self, part_name: str) -> int | None:
        if part_name in self.exact_parts:
            return self.exact_parts[part_name]
        m = re.fullmatch(r"([a-z]+)_\d+", part_name)
        return self.numbered_parts.get(m.group(1)) if m else None

    # -- interface -------------------------------------------------------------------------------

    def load_splits(self, data: DataConfig, size: int) -> LabelledSplits:
        root = Path(data.root or "")

        def resized(c: Crop) -> tuple[torch.Tensor, torch.Tensor]:
            return to_tensors([c.image], [c.mask], size)  # at once: hundreds of native-size crops add up

        train_crops = self.sorted_crops(root, "train", resized)
        labelled, val = train_crops[:NUM_LABELLED], train_crops[NUM_LABELLED:]
        if data.num_labelled > len(labelled):
            raise ConfigError(f"data.num_labelled: {data.num_labelled} labelled images requested, but {root} gives "
                              f"{len(labelled)} {self.voc_class} crops for the labelled set")
        splits = [stack(part, size) for part in (labelled[: data.num_labelled], val,
                                                 self.sorted_crops(root, "val", resized))]
        return LabelledSplits(list(self.CLASS_NAMES), *splits[0], *splits[1], *splits[2])

    def check(self, root: str | Path, limit: int | None = None) -> DataReport:
        root = require_root(f"pascal_{self.voc_class}", root, LAYOUT)
        report = DataReport(dataset=f"pascal_{self.voc_class}", root=str(root), class_names=list(self.CLASS_NAMES),
                            class_pixels=[0] * len(self.CLASS_NAMES))
        ids: list[str] = []
        for split in ("train", "val"):
            try:
                ids += read_id_list(image_list(root, self.voc_class, split))
            except DataError as e:
                report.problems.append(str(e))
        for image_id in ids[:limit] if limit is not None else ids:
            report.num_checked += 1
            try:
                crops = self.image_crops(root, image_id)
            except DataError as e:
                report.problems.append(str(e))
                continue
            for c in crops:
                report.add(c.image, c.mask)
        return report

    def load_unlabelled(self, data: DataConfig, size: int, n: int) -> torch.Tensor:
        if not data.unlabelled_root:
            raise ConfigError(f"data.unlabelled_root: {self.voc_class} needs a folder of unlabelled images "
                              "(the paper uses LSUN); set data.unlabelled_root=/path/to/images")
        return load_image_folder(data.unlabelled_root, size, n)

    # -- construction ----------------------------------------------------------------------------

    def crops(self, root: Path, voc_split: str) -> list[Crop]:
        """Every kept crop of the VOC split's positive images at native size, sorted by crop name."""
        return self.sorted_crops(root, voc_split, lambda c: c)

    def sorted_crops(self, root: Path, voc_split: str, fn: Callable[[Crop], T]) -> list[T]:
        named: list[tuple[str, T]] = []
        for image_id in read_id_list(image_list(root, self.voc_class, voc_split)):
            named += [(c.name, fn(c)) for c in self.image_crops(root, image_id)]
        # The reference sorts the written "{id}_{k}.png" files; sort the same strings.
        return [item for _, item in sorted(named, key=lambda t: t[0] + ".png")]

    def image_crops(self, root: Path, image_id: str) -> list[Crop]:
        mat_path = part_annotation_dir(root) / f"{image_id}.mat"
        objects = read_part_annotation(mat_path)
        if not any(cls == self.voc_class for cls, _, _ in objects):
            return []  # listed as positive in VOC but PASCAL-Part has no object of the class: skipped (reference)
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        image = read_image(image_path)
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        for cls, silhouette, parts in objects:
            check_same_size(image, silhouette, image_path, mat_path)
            if cls != self.voc_class:
                continue
            for part_name, part_mask in parts:
                label = self.part_class(part_name)
                if label is None:
                    raise DataError(f"{mat_path}: {self.voc_class} part {part_name!r} is not in the Table A.2 merge")
                check_same_size(image, part_mask, image_path, mat_path)
                mask[part_mask > 0] = label
        boxes = read_voc_boxes(root / "Annotations" / f"{image_id}.xml", self.voc_class)
        crops = []
        for k in kept_boxes(boxes, self.min_side):
            square = square_box(boxes[k], image.shape[0], image.shape[1])
            m = crop_with_padding(mask, square)
            if np.mean(m > 0) < MIN_LABELLED_FRACTION:
                continue
            crops.append(Crop(f"{image_id}_{k}", crop_with_padding(image, square), m))
        return crops


HORSE = PascalPartSet(
    voc_class="horse",
    CLASS_NAMES=["background", "head", "torso", "legs", "neck", "tail"],
    # The paper's Table A.2 legs row is cut short in print; the full list is the reference code's.
    exact_parts={
        **dict.fromkeys(["head", "leye", "reye", "lear", "rear", "muzzle"], 1),
        "torso": 2,
        **dict.fromkeys(["lfho", "rfho", "lbho", "rbho", "lfuleg", "lflleg", "rfuleg", "rflleg",
                         "lbuleg", "lblleg", "rbuleg", "rblleg"], 3),
        "neck": 4,
        "tail": 5,
    },
    min_side=32,
)

AEROPLANE = PascalPartSet(
    voc_class="aeroplane",
    CLASS_NAMES=["background", "body", "stern", "wing", "engine", "wheel"],
    exact_parts={"body": 1, "stern": 2, "tail": 2, "lwing": 3, "rwing": 3},
    numbered_parts={"engine": 4, "wheel": 5},  # PASCAL-Part numbers these: engine_1, wheel_2, ...
    min_side=50,
)


# ---------------------------------------------------------------------------------------------
# File readers


def image_list(root: Path, voc_class: str, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{voc_class}_{split}.txt"


def read_id_list(path: Path) -> list[str]:
    """Ids marked 1 (contains the class; 0 = difficult only, -1 = absent) in a VOC class list."""
    if not path.is_file():
        raise DataError(f"{path}: image list not found")
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1] not in ("1", "0", "-1"):
            raise DataError(f"{path}: line {n} is {line!r}, expected '<image id> 1|0|-1'")
        if tokens[1] == "1":
            ids.append(tokens[0])
    return ids


def part_annotation_dir(root: Path) -> Path:
    lagm_layout = root / "part_segmentation" / "Annotations_Part"
    return lagm_layout if lagm_layout.is_dir() else root / "Annotations_Part"


def read_part_annotation(path: Path) -> list[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]]:
    """A PASCAL-Part .mat -> [(class, silhouette, [(part_name, part_mask), ...]), ...]."""
    import scipy.io  # PASCAL-Part's .mat files only

    if not path.is_file():
        raise DataError(f"{path}: part annotation not found")
    try:
        anno = scipy.io.loadmat(str(path))["anno"][0, 0]
        objects = []
        for obj in anno["objects"].ravel():
            parts = obj["parts"].ravel() if obj["parts"].size else []  # [] in MATLAB when no part is annotated
            part_list = [(str(p["part_name"].item()), np.asarray(p["mask"])) for p in parts]
            objects.append((str(obj["class"].item()), np.asarray(obj["mask"]), part_list))
    except DataError:
        raise
    except Exception as e:  # scipy raises several types for truncated or foreign files
        raise DataError(f"{path}: not a PASCAL-Part annotation ({type(e).__name__}: {e})") from e
    return objects


def read_voc_boxes(path: Path, voc_class: str) -> list[tuple[int, int, int, int]]:
    """(xmin, ymin, xmax, ymax), 1-based inclusive as VOC stores them, of the class's objects in file order."""
    if not path.is_file():
        raise DataError(f"{path}: VOC box annotation not found")
    try:
        tree = ET.parse(path)
        boxes = []
        for obj in tree.findall("object"):
            if (obj.findtext("name") or "").strip() != voc_class:
                continue
            b = obj.find("bndbox")
            boxes.append(tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: unreadable VOC annotation ({type(e).__name__}: {e})") from e
    return boxes


# ---------------------------------------------------------------------------------------------
# Box filtering and cropping (pure functions, the reference's arithmetic)


def box_iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, 4] boxes, computed on the raw coordinates as the reference does; diagonal 0."""
    a, b = boxes[:, None], boxes[None]
    inter = np.prod(np.maximum(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0.0), -1)
    union = np.prod(np.maximum(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), 0.0), -1)
    iou = inter / (union + 1e-8)  # the reference's "union" is the enclosing box, not the set union
    np.fill_diagonal(iou, 0.0)
    return iou


def kept_boxes(boxes: list[tuple[int, int, int, int]], min_side: int) -> list[int]:
    """Indices of boxes that overlap no other box of the class by IoU > 0.05 and have both sides >= min_side."""
    if not boxes:
        return []
    iou = box_iou_matrix(np.asarray(boxes, dtype=np.float64))
    keep = []
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        if np.any(iou[k] > MAX_OVERLAP_IOU):
            continue
        if x2 - x1 + 1 < min_side or y2 - y1 + 1 < min_side:
            continue
        keep.append(k)
    return keep


def square_box(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """The square of the box's longer side around its centre, clipped to the image: 0-based [x1, x2) x [y1, y2)."""
    x1, y1, x2, y2 = box
    x1, y1 = x1 - 1, y1 - 1  # 1-based inclusive -> 0-based half-open
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2

    def clip(v: float, hi: int) -> int:
        return int(min(max(v, 0), hi))

    half = side / 2
    return clip(cx - half, width), clip(cy - half, height), clip(cx + half, width), clip(cy + half, height)


def crop_with_padding(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The clipped box's pixels centred in a zero square of its longer side."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    side = max(w, h)
    out = np.zeros((side, side) + array.shape[2:], dtype=array.dtype)
    px, py = (side - w) // 2, (side - h) // 2
    out[py: py + h, px: px + w] = array[y1:y2, x1:x2]
    return out


def stack(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not pairs:
        return to_tensors([], [], size)
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


# ---------------------------------------------------------------------------------------------
# Unlabelled images


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: unlabelled image folder not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def center_crop_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top: top + s, left: left + s]


def load_image_folder(folder: str | Path, size: int, n: int) -> torch.Tensor:
    """The first ``n`` images (sorted paths) centre-cropped to squares and resized: [n, 3, size, size] in [-1, 1]."""
    paths = list_images(folder)
    if len(paths) < n:
        raise DataError(f"{folder}: {n} unlabelled images requested, the folder holds {len(paths)}")
    out = []
    for p in paths[:n]:
        out.append(image_tensor(center_crop_square(read_image(p)), size))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)
