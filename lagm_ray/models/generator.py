"""StyleGAN2 generator in plain torch, with NVlabs stylegan2-ada-pytorch's parameter names.

Module and parameter names follow ``training/networks.py`` of stylegan2-ada-pytorch (config-f,
'skip' architecture), so a ``G_ema`` state dict loads without renaming: ``mapping.fc0.weight``,
``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b4.conv1.affine.weight``,
``synthesis.b8.conv0.noise_const``, ``synthesis.b8.torgb.weight``, ``synthesis.b8.resample_filter`` ...

Differences from NVlabs, none of which changes a name or a result in float32:
* no custom CUDA kernels: ``upfirdn2d`` and ``bias_act`` are their reference (pure torch) paths;
* the modulated convolution always runs un-fused (scale the input, shared conv, demodulate), which is
  NVlabs' ``fused_modconv=False`` path and equal to the fused one up to rounding;
* no fp16 layers; ``forward(..., return_features=True)`` also returns every synthesis block's output
  (the features h that LAGM's annotator reads);
* ``input_mode="w"`` (off by default) replaces ``synthesis.b4.const`` by ``synthesis.b4.input``, a linear
  map from w to the 4x4 input, used by the embedded world's toy generator only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .shapes import assert_shape

# ----------------------------------------------------------------------------- checks


def _check_latents(net: str, z: Any, c: Any, z_dim: int, c_dim: int) -> None:
    """z [N, z_dim] (may be None when z_dim = 0); c [N, c_dim], or None when c_dim = 0."""
    if z is not None or z_dim > 0:
        assert_shape(z, ["N", z_dim], net, "z")
    if c is not None or c_dim > 0:
        assert_shape(c, ["N" if z is None else z.shape[0], c_dim], net, "c")


# ----------------------------------------------------------------------------------- ops


def setup_filter(f: list[float]) -> torch.Tensor:
    """NVlabs' upfirdn2d.setup_filter for a short 1-D kernel: outer product, normalised to sum 1."""
    f = torch.as_tensor(f, dtype=torch.float32)
    f = f.ger(f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0),
              flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample. padding = (x0, x1, y0, y1)."""
    N, C, H, W = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(N, C, H, 1, W, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(N, C, H * up, W * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = F.conv2d(x, f[None, None].repeat(C, 1, 1, 1), groups=C)
    return x[:, :, ::down, ::down]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = ((fw + up - 1) // 2, (fw - up) // 2)
    return upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up * up)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = math.sqrt(2) if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1, padding: int = 0,
                    flip_weight: bool = True) -> torch.Tensor:
    """NVlabs' conv2d_resample for groups=1, down=1: plain conv, or transposed conv + FIR filter."""
    if up == 1:
        return F.conv2d(x, w if flip_weight else w.flip([2, 3]), padding=padding)
    kh, kw = w.shape[-2:]
    fw = f.shape[-1]
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    pxt = max(min(-px0, -px1), 0)
    wt = w.transpose(0, 1)
    if flip_weight:  # conv_transpose with flip_weight=(not flip_weight) in NVlabs' wrapper
        wt = wt.flip([2, 3])
    x = F.conv_transpose2d(x, wt, stride=up, padding=pxt)
    p0, p1 = px0 + pxt, px1 + pxt
    return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=up ** 2)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None, demodulate=True,
                     flip_weight=True) -> torch.Tensor:
    """Modulate the input channels by ``styles``, convolve, demodulate, add noise (un-fused path)."""
    B = x.shape[0]
    dcoefs = None
    if demodulate:
        w = weight.unsqueeze(0) * styles.reshape(B, 1, -1, 1, 1)
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, O]
    x = x * styles.reshape(B, -1, 1, 1)
    x = conv2d_resample(x, weight, resample_filter, up=up, padding=padding, flip_weight=flip_weight)
    if dcoefs is not None:
        x = x * dcoefs.reshape(B, -1, 1, 1)
    if noise is not None:
        x = x + noise
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ------------------------------------------------------------------------------- layers


class FullyConnectedLayer(nn.Module):
    def __init__(self,
        in_features: int,               # Number of input features (x is [N, in_features]).
        out_features: int,              # Number of output features.
        bias: bool = True,              # Apply additive bias before the activation function?
        activation: str = "linear",     # Activation function: 'linear' or 'lrelu'.
        lr_multiplier: float = 1.0,     # Learning rate multiplier (equalized lr: weight stored divided by it).
        bias_init: float = 0.0,         # Initial value for the additive bias.
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)  # equalized learning rate
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    def __init__(self,
        z_dim: int,                         # Input latent (Z) dimensionality, 0 = no latent.
        c_dim: int,                         # Conditioning label (C) dimensionality, 0 = no label.
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        num_ws: int,                        # Number of copies of w to output: forward gives [N, num_ws, w_dim].
        num_layers: int = 8,                # Number of mapping layers.
        embed_features: int | None = None,  # Label embedding dimensionality, None = same as w_dim.
        layer_features: int | None = None,  # Number of features in the hidden mapping layers, None = w_dim.
        activation: str = "lrelu",          # Activation function of the mapping layers: 'lrelu' or 'linear'.
        lr_multiplier: float = 0.01,        # Learning rate multiplier for the mapping layers.
        w_avg_beta: float | None = 0.995,   # Decay of the moving average of W (buffer w_avg, the truncation
                                            # centre) tracked in training mode, None = do not track.
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                skip_w_avg_update: bool = False) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] (None when c_dim = 0) -> ws [N, num_ws, w_dim]."""
        _check_latents("MappingNetwork", z, c, self.z_dim, self.c_dim)
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self,
        in_channels: int,                   # Number of input channels.
        out_channels: int,                  # Number of output channels.
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        resolution: int,                    # Resolution of this layer's output, pixels per side (noise_const size).
        kernel_size: int = 3,               # Convolution kernel size.
        up: int = 1,                        # Integer upsampling factor (2 for a block's conv0, else 1).
        use_noise: bool = True,             # Enable noise input (buffer noise_const, parameter noise_strength)?
        activation: str = "lrelu",          # Activation function: 'lrelu' or 'linear'.
        resample_filter=(1, 3, 3, 1),       # Low-pass filter taps (1-D, applied separably) used when upsampling.
        conv_clamp: float | None = None,    # Clamp the output of the convolution to +-X, None = disable clamping.
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = math.sqrt(2) if activation == "lrelu" else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be random, const or none, got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    def __init__(self,
        in_channels: int,                   # Number of input (feature) channels.
        out_channels: int,                  # Number of output color channels.
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        kernel_size: int = 1,               # Convolution kernel size.
        conv_clamp: float | None = None,    # Clamp the output to +-X, None = disable clamping.
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv0), conv1, toRGB added to the upsampled skip image."""

    def __init__(self,
        in_channels: int,                   # Number of input channels, 0 = first block.
        out_channels: int,                  # Number of output channels.
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        resolution: int,                    # Resolution of this block's output, pixels per side.
        img_channels: int,                  # Number of output color channels.
        is_last: bool,                      # Is this the last block? (Stored only: 'skip' has a toRGB per block.)
        architecture: str = "skip",         # Architecture: only 'skip' (StyleGAN2 config-f) is supported.
        resample_filter=(1, 3, 3, 1),       # Low-pass filter taps used when upsampling activations and the image.
        conv_clamp: float | None = None,    # Clamp the output of convolution layers to +-X, None = disable clamping.
        input_mode: str = "const",          # First block's input: 'const' (NVlabs' learned [C, r, r] constant) or
                                            # 'w' (a linear map from w; not in NVlabs).
        **layer_kwargs: Any,                # Arguments for SynthesisLayer.
    ):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"only the 'skip' architecture (StyleGAN2 config-f) is supported, got {architecture!r}")
        if input_mode not in ("const", "w"):
            raise ValueError(f"input_mode must be 'const' (NVlabs) or 'w', got {input_mode!r}")
        self.input_mode = input_mode
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0 and input_mode == "const":
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        elif in_channels == 0:
            # Not in NVlabs: the first block's input is a linear function of w instead of a constant.
            # The toy generator uses it to learn an exact latent -> scene layout in minutes on a CPU.
            self.input = FullyConnectedLayer(w_dim, out_channels * resolution * resolution)
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str = "random"):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0 and self.input_mode == "const":
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        elif self.in_channels == 0:
            x = self.input(ws[:, 0]).reshape(ws.shape[0], -1, self.resolution, self.resolution)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter))
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self,
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        img_resolution: int,                # Output image resolution, pixels per side (a power of two >= 4).
        img_channels: int,                  # Number of color channels.
        channel_base: int = 32768,          # Overall multiplier for the number of channels (channel_base // res).
        channel_max: int = 512,             # Maximum number of channels in any layer.
        num_fp16_res: int = 0,              # NVlabs' FP16 option; accepted and ignored (every layer is float32).
        **block_kwargs: Any,                # Arguments for SynthesisBlock.
    ):
        super().__init__()
        log2 = int(np.log2(img_resolution))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, self.channels_dict[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=(res == img_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def run_blocks(self, ws: torch.Tensor, noise_mode: str = "random", resolution: int | None = None):
        """Every block's output x and its running skip image (the image so far, at that resolution),
        up to the block at ``resolution`` (default: all of them). ws: [N, num_ws, w_dim]."""
        assert_shape(ws, ["N", self.num_ws, self.w_dim], "SynthesisNetwork", "ws")
        resolution = resolution or self.img_resolution
        if resolution not in self.block_resolutions:
            raise ValueError(f"resolution {resolution} is not a synthesis block's; blocks: {self.block_resolutions}")
        block_ws, w_idx = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        x = img = None
        features, images = [], []
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            if res > resolution:
                break
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, noise_mode=noise_mode)
            features.append(x)
            images.append(img)
        return features, images

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", return_features: bool = False,
                resolution: int | None = None):
        """The image (and block outputs); ``resolution`` stops at that block and returns its skip image."""
        features, images = self.run_blocks(ws, noise_mode, resolution)
        return (images[-1], features) if return_features else images[-1]


class Generator(nn.Module):
    """z -> w (mapping) -> image (synthesis). ``forward(z, c, ...)`` as NVlabs' G / G_ema."""

    def __init__(self,
        z_dim: int,                         # Input latent (Z) dimensionality.
        c_dim: int,                         # Conditioning label (C) dimensionality, 0 = unconditional.
        w_dim: int,                         # Intermediate latent (W) dimensionality.
        img_resolution: int,                # Output resolution, pixels per side.
        img_channels: int = 3,              # Number of output color channels.
        mapping_kwargs: dict | None = None, # Arguments for MappingNetwork.
        **synthesis_kwargs: Any,            # Arguments for SynthesisNetwork.
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    @property
    def block_resolutions(self) -> list[int]:
        return self.synthesis.block_resolutions

    def feature_channels(self) -> list[int]:
        """Channels of each synthesis block's output, coarse to fine (the annotator's inputs)."""
        return [self.synthesis.channels_dict[r] for r in self.block_resolutions]

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random", return_features: bool = False,
                resolution: int | None = None):
        """z [N, z_dim], c [N, c_dim] (None when c_dim = 0) -> image [N, img_channels, R, R] (and the block
        outputs, coarse to fine); R = img_resolution, or ``resolution``."""
        _check_latents("Generator", z, c, self.z_dim, self.c_dim)
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, return_features=return_features, resolution=resolution)
