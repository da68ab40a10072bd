"""LayerMatch (Galeev et al., "Learning High-Resolution Domain-Specific Representations with a GAN
Generator", Sec. 2-3), two modes (``layermatch.mode``):

    decoder    Algorithm 1: a light semantic projection decoder P on the generator's block outputs, trained
               on data.num_labelled annotated generated images (their true masks), steps 1..decoder_steps;
               Algorithm 2: the segmentor trained on generated images labelled by P, the remaining steps.
               P is ``self.annotator``.
    pretrain   Algorithm 3: the segmentor's encoder E (plus one small head per matched generator block)
               predicts the generator's activations from the generated image, L = L_rec + L_match
               (Eqs. 1-4), steps 1..pretrain_steps; then the whole segmentor, starting from the pre-trained
               encoder, is fine-tuned on the real labelled images.

The segmentor's encoder, by kind: for the U-Net its down path (inc, down1..down4: five maps, full size to
1/16); for DeepLabV3 its ResNet backbone (layer1..layer4, after the input normalisation). The coarsest
matched generator block is predicted from the encoder's deepest map (so the whole encoder is trained); every
other block of resolution r from the coarsest encoder map at least r pixels wide (the finest map when none
is); each through conv3x3-BN-ReLU-conv1x1 to the block's channels and a bilinear resize to r x r.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import config_section
from ..data.datasets import resize_labels
from ..errors import ConfigError
from ..evaluation import annotator_labels
from ..models.generator import SynthesisNetwork, upsample2d
from ..models.segmentors import DeepLabV3, UNet
from ..synthetic import feature_index, to_size
from ..trainer import Trainer, make_optimizer


@config_section
class LayerMatchSettings:
    """LayerMatch (Galeev et al., "Learning high-resolution domain-specific representations with a GAN
    generator"), Sections 2-3. mode "decoder": Algorithm 1 (semantic projection decoder on annotated
    generated images, steps 1..decoder_steps) then Algorithm 2 (segmentor on generated images it labels).
    mode "pretrain": Algorithm 3 (LayerMatch pre-training of the segmentor's encoder, steps
    1..pretrain_steps) then fine-tuning the whole segmentor on the real labelled images."""

    mode: Literal["decoder", "pretrain"] = "pretrain"  # Sec. 3-4 is the paper's main proposal
    # decoder mode (Sec. 2.2): 32 feature maps, CBlock = dropout 0.5 + conv + BN; optimiser train.annotator_optim
    decoder_steps: Annotated[int, Field(ge=0)] = 5_000  # not given in the paper; a share of the budget
    decoder_width: Annotated[int, Field(ge=1)] = 32
    decoder_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5
    annotation_seed: int = 424_242  # the seeded "annotated generated images" (data.num_labelled of them)
    # pretrain mode (Sec. 3.1, 4): Adam lr 1e-4 with cosine decay; L = L_rec + L_match (Eq. 1)
    pretrain_steps: Annotated[int, Field(ge=0)] = 100_000  # not given in the paper; a share of the 150k default
    pretrain_lr: Annotated[float, Field(gt=0)] = 1.0e-4
    pretrain_batch_size: Annotated[int, Field(ge=2, description="BatchNorm")] = 8  # not given in the paper
    match_resolutions: list[int] = field(default_factory=list)  # generator blocks to predict; empty = all
    rec_weight: Annotated[float, Field(ge=0)] = 1.0  # Eq. 1 adds L_rec and L_match with weight 1
    # "sum" = Eqs. 2 and 4 as written (squared L2 norms, batch mean); "mean" = per-element mean (MSE)
    reduction: Literal["sum", "mean"] = "sum"


# ------------------------------------------------------------------------------ mode "decoder"


class ResidualBlock(nn.Module):
    """RBlock: one residual block of two 3x3 convolutions."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + y)


class SemanticProjectionDecoder(nn.Module):
    """Fig. 1(a): per synthesis block a CBlock (50% dropout, 3x3 conv, BN) of its output; the running map
    is upsampled to the next block's size, the CBlock added, and an RBlock applied; 32 maps throughout
    (Sec. 2.2); a 1x1 conv to class logits at the finest block's resolution."""

    def __init__(self, feature_channels: Sequence[int], num_classes: int, width: int = 32, dropout: float = 0.5):
        super().__init__()
        self.cblocks = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            for c in feature_channels)
        self.rblocks = nn.ModuleList(ResidualBlock(width) for _ in feature_channels)
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.cblocks):
            raise ValueError(f"decoder expects {len(self.cblocks)} feature maps, got {len(features)}")
        x = None
        for cblock, rblock, feat in zip(self.cblocks, self.rblocks, features):
            c = cblock(feat.float())
            x = c if x is None else F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False) + c
            x = rblock(x)
        return self.out(x)


# ------------------------------------------------------------------------------ mode "pretrain"


def encoder_modules(segmentor: nn.Module) -> list[nn.Module]:
    """The part of the segmentor LayerMatch pre-trains (see the module docstring)."""
    if isinstance(segmentor, UNet):
        return [segmentor.inc, segmentor.down1, segmentor.down2, segmentor.down3, segmentor.down4]
    if isinstance(segmentor, DeepLabV3):
        return [segmentor.backbone]
    raise ConfigError(f"layermatch pretrain: no encoder rule for {type(segmentor).__name__}")


def encoder_features(segmentor: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's maps, fine to coarse, exactly as the segmentor's own forward computes them."""
    if isinstance(segmentor, UNet):
        feats = [segmentor.inc(x)]
        for down in (segmentor.down1, segmentor.down2, segmentor.down3, segmentor.down4):
            feats.append(down(feats[-1]))
        return feats
    if isinstance(segmentor, DeepLabV3):
        if segmentor.normalize_input:
            x = x * segmentor._in_scale + segmentor._in_shift
        return segmentor.backbone.features(x)
    raise ConfigError(f"layermatch pretrain: no encoder rule for {type(segmentor).__name__}")


def pick_encoder_map(sizes: Sequence[int], target: int) -> int:
    """Index of the coarsest encoder map at least ``target`` wide (the deepest among equals), else of the finest."""
    wide = [i for i, s in enumerate(sizes) if s >= target]
    if wide:
        return max(wide, key=lambda i: (-sizes[i], i))
    return max(range(len(sizes)), key=lambda i: (sizes[i], i))


class MatchHeads(nn.Module):
    """One auxiliary head per predicted generator block (Sec. 4: discarded after pre-training)."""

    def __init__(self, enc_channels: Sequence[int], enc_sizes: Sequence[int], targets: Sequence[tuple[int, int]]):
        super().__init__()
        self.sources = [pick_encoder_map(enc_sizes, r) for _, r in targets]
        # the coarsest block reads the deepest map, so every encoder layer gets a gradient
        self.sources[min(range(len(targets)), key=lambda i: targets[i][1])] = len(enc_sizes) - 1
        self.sizes = [r for _, r in targets]
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(enc_channels[s], c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                          nn.ReLU(inplace=True), nn.Conv2d(c, c, 1))
            for s, (c, _) in zip(self.sources, targets))

    def forward(self, enc: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [F.interpolate(head(enc[s]), size=(r, r), mode="bilinear", align_corners=False)
                if enc[s].shape[-1] != r else head(enc[s])
                for head, s, r in zip(self.heads, self.sources, self.sizes)]


def squared_l2(a: torch.Tensor, b: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """||a - b||_2^2 per sample, averaged over the batch ("sum", as Eqs. 2 and 4 are written), or the mean
    over every element ("mean", an MSE)."""
    d = (a - b).pow(2)
    return d.flatten(1).sum(1).mean() if reduction == "sum" else d.mean()


def layermatch_losses(targets: Sequence[torch.Tensor], preds: Sequence[torch.Tensor], image: torch.Tensor,
                      rec_image: torch.Tensor, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2, L_match = 1/n sum_i ||phi_i - phi_hat_i||^2, and Eq. 4, L_rec = ||I_rec - I_gen||^2."""
    match = sum(squared_l2(p, t, reduction) for t, p in zip(targets, preds)) / len(targets)
    return match, squared_l2(rec_image, image, reduction)


def block_ws(synthesis: SynthesisNetwork, ws: torch.Tensor) -> list[torch.Tensor]:
    """The w slice of each synthesis block, as SynthesisNetwork.run_blocks cuts them."""
    out, idx = [], 0
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f"b{res}")
        out.append(ws.narrow(1, idx, block.num_conv + block.num_torgb))
        idx += block.num_conv
    return out


def resynthesize(synthesis: SynthesisNetwork, ws: torch.Tensor, m: int, phi_m: torch.Tensor,
                 prev_image: torch.Tensor | None, noise_mode: str) -> torch.Tensor:
    """Eq. 3: the image when block m's output is replaced by ``phi_m`` and blocks m+1.. are recomputed.
    ``prev_image`` is the skip image of block m-1 (None for the first block): it depends on phi_1..phi_{m-1}
    only. Block m's own toRGB reads ``phi_m`` (its w is the slice's entry after the convs')."""
    blocks = [getattr(synthesis, f"b{r}") for r in synthesis.block_resolutions]
    wss = block_ws(synthesis, ws)
    block = blocks[m]
    img = block.torgb(phi_m, wss[m][:, block.num_conv])
    if prev_image is not None:
        img = upsample2d(prev_image, block.resample_filter) + img
    x = phi_m
    for k in range(m + 1, len(blocks)):
        x, img = blocks[k](x, img, wss[k], noise_mode=noise_mode)
    return img


def cosine_lr(base: float, t: int, total: int) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * min(t, total) / max(total, 1)))


# ------------------------------------------------------------------------------ the method


class LayerMatchTrainer(Trainer):
    """``train.method: layermatch``; ``layermatch.mode`` picks Algorithms 1-2 or Algorithm 3."""

    section, Settings = "layermatch", LayerMatchSettings

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        lm = cfg.layermatch
        stage = "decoder_steps" if lm.mode == "decoder" else "pretrain_steps"
        if getattr(lm, stage) >= cfg.train.steps:
            raise ConfigError(f"layermatch.{stage} must leave steps for the second stage of "
                              f"train.steps={cfg.train.steps}")

    def build(self) -> None:
        if self.cfg.layermatch.mode == "decoder":
            self._build_decoder()
        else:
            self._build_pretrain()

    # ---- decoder

    def _build_decoder(self) -> None:
        lm = self.cfg.layermatch
        if not self.source.has_true_masks:
            raise ConfigError("layermatch.mode decoder needs annotated generated images (true masks), which only "
                              "the embedded world's generator at generator.truncation_psi=1 provides")
        channels = [self.source.feature_channels()[i] for i in self.feature_index]
        self.annotator = SemanticProjectionDecoder(channels, self.num_classes, lm.decoder_width,
                                                   lm.decoder_dropout).to(self.device)
        self.opt_a = make_optimizer(self.annotator.parameters(), self.cfg.train.annotator_optim)
        # "a person annotates a few generated images": a fixed seed, its own stream
        batch = self.source.sample(self.cfg.data.num_labelled, seed=lm.annotation_seed)
        self.annotated_features = [batch.features[i] for i in self.feature_index]
        self.annotated_masks = batch.true_masks

    def decoder_step(self) -> dict[str, float]:
        n, b = len(self.annotated_masks), self.cfg.train.labelled_batch_size
        idx = torch.arange(n) if b == 0 or b >= n else torch.randperm(n, generator=self.rng)[:b]
        idx = idx.to(self.annotated_masks.device)
        A = self.annotator
        A.train()
        logits = A([f[idx] for f in self.annotated_features])
        loss = F.cross_entropy(logits, resize_labels(self.annotated_masks[idx], logits.shape[-2:]), ignore_index=255)
        self.minimise(loss, self.opt_a, A.parameters())
        return {"loss/decoder": loss.item()}

    def segmentor_step_decoder_labels(self) -> dict[str, float]:
        """Algorithm 2: cross-entropy against the decoder's (hard) labels of fresh generated images."""
        images, features = self.synthetic_batch()
        labels = resize_labels(annotator_labels(self.annotator, features), self.seg_size)
        S = self.segmentor
        S.train()
        loss = F.cross_entropy(S(images), labels)
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/segmentor": loss.item()}

    # ---- pretrain

    def _build_pretrain(self) -> None:
        lm = self.cfg.layermatch
        G = self.source.G
        self.match_index = feature_index(G.block_resolutions, lm.match_resolutions)
        self.encoder_params = [p for m in encoder_modules(self.segmentor) for p in m.parameters()]
        was_training = self.segmentor.training
        self.segmentor.eval()  # a shape probe: eval mode leaves the BN statistics alone
        with torch.no_grad():
            probe = encoder_features(self.segmentor, torch.zeros(1, 3, self.seg_size, self.seg_size, device=self.device))
        self.segmentor.train(was_training)
        channels = G.feature_channels()
        targets = [(channels[i], G.block_resolutions[i]) for i in self.match_index]
        self.heads = MatchHeads([f.shape[1] for f in probe], [f.shape[-1] for f in probe], targets).to(self.device)
        # Sec. 4: Adam, lr 1e-4, cosine decay, over the encoder and the auxiliary heads
        self.opt_lm = torch.optim.Adam([*self.encoder_params, *self.heads.parameters()], lr=lm.pretrain_lr)

    def layermatch_loss(self, z: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_match, L_rec) for latents z with generator block m replaced by its prediction (Eqs. 1-4)."""
        src, lm = self.source, self.cfg.layermatch
        G = src.G
        with torch.no_grad():
            ws = G.mapping(z, None, truncation_psi=src.truncation_psi, truncation_cutoff=src.truncation_cutoff)
            feats, images = G.synthesis.run_blocks(ws, noise_mode=src.noise_mode)
        image = images[-1]
        preds = self.heads(encoder_features(self.segmentor, to_size(image.clamp(-1, 1), self.seg_size)))
        phi_hat_m = preds[self.match_index.index(m)]
        rec = resynthesize(G.synthesis, ws, m, phi_hat_m, images[m - 1] if m > 0 else None, src.noise_mode)
        return layermatch_losses([feats[i] for i in self.match_index], preds, image, rec, lm.reduction)

    def layermatch_step(self) -> dict[str, float]:
        lm = self.cfg.layermatch
        z = self.source.latents(lm.pretrain_batch_size, self.rng)
        m = self.match_index[int(torch.randint(len(self.match_index), (1,), generator=self.rng))]
        lr = cosine_lr(lm.pretrain_lr, self.step - 1, lm.pretrain_steps)
        for group in self.opt_lm.param_groups:
            group["lr"] = lr
        self.segmentor.train()
        self.heads.train()
        match, rec = self.layermatch_loss(z, m)
        loss = lm.rec_weight * rec + match
        self.minimise(loss, self.opt_lm, [*self.encoder_params, *self.heads.parameters()])
        return {"loss/layermatch": loss.item(), "loss/match": match.item(), "loss/rec": rec.item(),
                "lr/layermatch": lr}

    # ---- hooks

    def method_step(self) -> dict[str, float]:
        lm = self.cfg.layermatch
        if lm.mode == "decoder":
            return self.decoder_step() if self.step <= lm.decoder_steps else self.segmentor_step_decoder_labels()
        return self.layermatch_step() if self.step <= lm.pretrain_steps else self.segmentor_step_supervised()

    def method_state(self) -> dict[str, Any]:
        if self.cfg.layermatch.mode == "decoder":
            return {}  # the decoder and its optimiser are annotator and opt_a
        return {"heads": self.heads.state_dict(), "opt_lm": self.opt_lm.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if self.cfg.layermatch.mode == "pretrain":
            self.heads.load_state_dict(state["heads"])
            self.opt_lm.load_state_dict(state["opt_lm"])
