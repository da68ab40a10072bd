"""Colour masks, labelled grids, figures and atomic PNG saving."""

import os

import numpy as np
import torch
from PIL import Image

from lagm_ray.viz import (
    colorize,
    confusion_matrix_figure,
    labelled_grid,
    line_plot,
    palette,
    save_png,
    to_uint8_image,
)


def test_palette_distinct_and_deterministic():
    p = palette(40)
    assert p.shape == (40, 3) and p.dtype == np.uint8
    assert p[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in p.tolist()}) == 40
    assert np.array_equal(p, palette(40)) and np.array_equal(palette(5), p[:5])


def test_colorize_torch_and_numpy():
    mask = torch.tensor([[0, 1], [255, 2]])
    rgb = colorize(mask, 3)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    p = palette(3)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == p[1].tolist() and rgb[1, 1].tolist() == p[2].tolist()
    assert rgb[1, 0].tolist() == [255, 255, 255]  # ignore is white
    assert np.array_equal(colorize(mask.numpy(), 3), rgb)


def test_to_uint8_image():
    img = torch.stack([torch.full((2, 3), -1.0), torch.zeros(2, 3), torch.full((2, 3), 1.0)])
    out = to_uint8_image(img)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 128, 255]


def test_labelled_grid_size_and_legend():
    names = ["background", "head", "body"]
    tile_img = to_uint8_image(torch.zeros(3, 8, 8))
    tile_mask = colorize(torch.tensor([[1] * 8] * 8), 3)
    cols = {"image": [tile_img] * 3, "mask": [tile_mask] * 3}
    img = labelled_grid(cols, names, scale=4)
    assert isinstance(img, Image.Image)
    w, h = img.size
    assert w >= 2 * 32 + 3 * 2
    assert h > 3 * 32 + 4 * 2 + 10  # tiles + gaps + header, plus the legend
    arr = np.asarray(img)
    legend = arr[3 * 34 + 14:]  # below the tiles
    body = palette(3)[2]
    assert (legend == body).all(-1).any(), "legend swatch for class 2 missing"
    # Tiles are upscaled with nearest neighbour: an unmixed block of the class 1 colour exists.
    assert (arr == palette(3)[1]).all(-1).sum() >= 3 * 32 * 32


def test_figures_render():
    cm = torch.tensor([[5, 1], [0, 3]])
    fig = confusion_matrix_figure(cm, ["bg", "fg"], title="test")
    assert isinstance(fig, Image.Image) and fig.size[0] > 100
    plot = line_plot({"train": ([0, 1, 2], [1.0, 0.5, 0.2])}, "loss", "step", "loss")
    assert isinstance(plot, Image.Image) and plot.mode == "RGB"


def test_save_png_atomic(tmp_path):
    img = Image.fromarray(colorize(np.array([[0, 1], [2, 255]]), 3))
    out = tmp_path / "a" / "b" / "grid.png"
    save_png(img, out)
    assert os.listdir(out.parent) == ["grid.png"]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(img))
