"""Pictures for reports: coloured masks, labelled grids, confusion matrices and curves.

Pillow and matplotlib are imported inside the functions that need them so that importing this
module stays cheap; matplotlib is used through its object API with the Agg canvas (no pyplot,
no global backend switch, safe in worker threads).
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .storage import atomic_path

IGNORE_COLOR = (255, 255, 255)
GAP = 2


def palette(num_classes: int) -> np.ndarray:
    """[C, 3] uint8, the PASCAL VOC bit-interleaving palette: deterministic, class 0 black,
    neighbouring ids get very different colours, distinct for up to 256 classes."""
    if not 0 < num_classes <= 256:
        raise ValueError(f"palette supports 1..256 classes, got {num_classes}")
    out = np.zeros((num_classes, 3), np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(mask, num_classes: int) -> np.ndarray:
    """[H, W] labels -> [H, W, 3] uint8. Ignore (255) and any other out-of-range label are white."""
    m = _numpy(mask).astype(np.int64)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {m.shape}")
    lut = np.concatenate([palette(num_classes), np.array([IGNORE_COLOR], np.uint8)])
    idx = np.where((m >= 0) & (m < num_classes), m, num_classes)
    return lut[idx]


def to_uint8_image(img) -> np.ndarray:
    """[3, H, W] (or [1, H, W]) float in [-1, 1] -> [H, W, 3] uint8."""
    x = _numpy(img).astype(np.float32)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image must be [3, H, W] or [1, H, W], got shape {x.shape}")
    x = np.repeat(x, 3, 0) if x.shape[0] == 1 else x
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def labelled_grid(columns: dict[str, list[np.ndarray]], class_names: Sequence[str], scale: int = 1):
    """One column per key (key as header), one row per list index, and a colour legend below."""
    if not columns:
        raise ValueError("labelled_grid needs at least one column")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all columns need the same number of tiles, got {lengths}")
    n_rows = next(iter(lengths.values()))
    tiles = {k: [np.asarray(t) for t in v] for k, v in columns.items()}
    shapes = {t.shape[:2] for v in tiles.values() for t in v}
    if len(shapes) > 1:
        raise ValueError(f"all tiles must have the same size, got {sorted(shapes)}")
    h, w = shapes.pop() if shapes else (0, 0)
    th, tw = h * scale, w * scale

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(_text_size(measure, "Ag", font)[1], 10) + 4
    # Columns widen for long headers so the text is never clipped; tiles are centred.
    col_w = [max(tw, _text_size(measure, k, font)[0] + 4) for k in columns]
    grid_w = sum(col_w) + GAP * (len(col_w) + 1)

    # Legend: swatch + name items, wrapped into lines that fit the grid width.
    sw = line_h - 4
    items = [(i, name, sw + 4 + _text_size(measure, name, font)[0] + 10) for i, name in enumerate(class_names)]
    lines, cur, cur_w = [], [], 0
    for it in items:
        if cur and cur_w + it[2] > grid_w - 2 * GAP:
            lines.append(cur)
            cur, cur_w = [], 0
        cur.append(it)
        cur_w += it[2]
    if cur:
        lines.append(cur)
    legend_w = max([sum(it[2] for it in ln) + 2 * GAP for ln in lines] + [0])
    width = max(grid_w, legend_w)

    grid_top = GAP + line_h
    legend_top = grid_top + n_rows * (th + GAP) + GAP
    height = legend_top + len(lines) * line_h + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    x = GAP
    for (name, col), cw in zip(tiles.items(), col_w):
        draw.text((x + 2, GAP), name, fill=(0, 0, 0), font=font)
        for r, tile in enumerate(col):
            tile = np.repeat(tile[..., None], 3, -1) if tile.ndim == 2 else tile[..., :3]
            im = Image.fromarray(tile.astype(np.uint8)).resize((tw, th), Image.NEAREST)
            canvas.paste(im, (x + (cw - tw) // 2, grid_top + r * (th + GAP)))
        x += cw + GAP

    pal = palette(max(len(class_names), 1))
    for li, ln in enumerate(lines):
        x, y = GAP, legend_top + li * line_h
        for i, name, iw in ln:
            draw.rectangle([x, y + 2, x + sw - 1, y + 1 + sw], fill=tuple(int(c) for c in pal[i]), outline=(0, 0, 0))
            draw.text((x + sw + 4, y + 2), name, fill=(0, 0, 0), font=font)
            x += iw
    return canvas


def _figure_to_image(fig):
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # drawing only: matplotlib takes ~0.5 s to import
    )

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    buf.seek(0)
    img = Image.open(buf)
    img.load()  # detach from the buffer
    return img.convert("RGB")


def confusion_matrix_figure(cm, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix (row = true class), each cell annotated with its fraction."""
    from matplotlib.figure import (
        Figure,  # drawing only: matplotlib takes ~0.5 s to import
    )

    m = _numpy(cm).astype(np.float64)
    C = m.shape[0]
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    size = max(4.0, 0.45 * C + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(C), labels=list(class_names), rotation=90)
    ax.set_yticks(range(C), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fs = max(4, min(9, 120 // max(C, 1)))
    for i in range(C):
        for j in range(C):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=fs,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _figure_to_image(fig)


def line_plot(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import (
        Figure,  # drawing only: matplotlib takes ~0.5 s to import
    )

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    return _figure_to_image(fig)


def save_png(image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")  # explicit: the temp name has no .png suffix
