"""`lagm data check`: validate a real dataset folder with its module's check(), summarise it, and
draw a picture grid of images beside their coloured masks.

Every module registered in datasets.REAL_DATASETS provides ``check(root, limit) -> DataReport``;
this file only presents the report, so it works for each dataset the same way. A folder that is not the
dataset at all (missing, empty, another dataset's) is one ConfigError naming it, raised by the module's
check; a broken one lists its first MAX_LISTED problems and then counts the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.table import Table

from ..viz import colorize, labelled_grid, save_png
from .datasets import canonical_dataset_name, real_dataset_module
from .files import DataReport

MAX_LISTED = 20  # problems printed one per line; the rest are counted
TILE = 128  # picture tiles are letterboxed into TILE x TILE (datasets such as PASCAL-Part vary in size)


def run_check(root: str | Path, dataset: str, limit: int | None = None) -> DataReport:
    """The named dataset's check of ``root``. ConfigError, in one line, for an unknown name or for a
    ``root`` that is missing, empty or holds none of the release's top-level folders."""
    return real_dataset_module(dataset).check(root, limit=limit)


def summary_table(report: DataReport) -> Table:
    """Each class's share of the labelled pixels of the checked masks."""
    table = Table(title=f"{report.dataset}: class frequencies")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share %", justify="right")
    for (name, share), pixels in zip(report.class_frequencies().items(), report.class_pixels):
        table.add_row(name, f"{pixels:,}", f"{100 * share:.2f}")
    return table


def summary_line(report: DataReport) -> str:
    return (f"{report.num_checked} images checked, {len(report.problems)} problem(s), "
            f"{len(report.samples)} shown in the picture")


def problem_lines(report: DataReport, max_listed: int = MAX_LISTED) -> list[str]:
    """What `lagm data check` prints after the table: the problems (the first ``max_listed``, one per line,
    each starting with its file, then how many more), and last the summary line."""
    problems = report.problems
    lines = [f"{len(problems)} problem(s):", *problems[:max_listed]] if problems else []
    if len(problems) > max_listed:
        lines.append(f"... and {len(problems) - max_listed} more problem(s), not listed")
    return lines + [summary_line(report)]


def _letterbox(tile: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Fit into size x size keeping the aspect ratio, padded with white."""
    h, w = tile.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    im = Image.fromarray(tile).resize((nw, nh), Image.NEAREST if nearest else Image.BILINEAR)
    out = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(im.convert("RGB"))
    return out


def check_picture(report: DataReport, tile: int = TILE):
    """A PIL image: one row per sample (image, coloured mask, overlay) and the class legend;
    None when no sample could be read."""
    if not report.samples:
        return None
    n = len(report.class_names)
    columns: dict[str, list[np.ndarray]] = {"image": [], "mask": [], "overlay": []}
    for image, mask in report.samples:
        colour = colorize(mask, n)
        if image.shape[:2] != mask.shape[:2]:  # show both at the mask's size
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((mask.shape[1], mask.shape[0]), Image.BILINEAR))
        blend = (0.5 * image.astype(np.float32) + 0.5 * colour.astype(np.float32)).round().astype(np.uint8)
        columns["image"].append(_letterbox(image, tile, nearest=False))
        columns["mask"].append(_letterbox(colour, tile, nearest=True))
        columns["overlay"].append(_letterbox(blend, tile, nearest=False))
    return labelled_grid(columns, report.class_names)


def write_picture(report: DataReport, out_dir: str | Path) -> Path | None:
    """out_dir/check_<dataset>.png, or None when there is nothing to show."""
    picture = check_picture(report)
    if picture is None:
        return None
    path = Path(out_dir) / f"check_{canonical_dataset_name(report.dataset)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(picture, path)
    return path
