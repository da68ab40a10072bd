"""LAGM's own baselines (Appendix C): the same FPN annotator learnt by another objective.

    pseudo_label (Table C.6)  (i) teacher S_t <- labelled images; (ii) A <- CE(A(h), argmax S_t(x)) on
                              generated images; (iii) S <- annotator-labelled generated images
    inversion    (Table C.5)  project the labelled images into G (StyleGAN2-ADA projector, MSE instead of
                              LPIPS); (ii) A <- CE(A(h(w*)), y_real); (iii) S as above
    maml         (Alg. 2)     A <- grad_w CE(S_theta_K(x_l), y_l) through K unrolled SGD steps of S on A's
                              labels; S steps on annotator-labelled generated images as in LAGM

The two staged methods split train.steps by their config fractions; their last stage trains a freshly
initialised segmentor (the one evaluated) on a frozen annotator's labels, so the score is the annotator's.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.func import functional_call

from .. import gm
from ..config import config_section, invalid
from ..errors import ConfigError
from ..models.annotator import FPNAnnotator
from ..synthetic import feature_select, to_size
from ..trainer import Trainer, make_optimizer

# projector.py (Karras et al. 2020b) schedule constants: lr ramps up over the first 5% of steps and down
# (cosine) over the last 25%; the w jitter fades out (quadratically) over the first 75%.
LR_RAMPUP, LR_RAMPDOWN, NOISE_RAMP = 0.05, 0.25, 0.75
PROJECTION_SEED_OFFSET = 7_919  # projection noise comes from its own stream (run.seed + this)


def stage_steps(steps: int, fractions: Sequence[float]) -> list[int]:
    """train.steps split into one stage per fraction plus a last stage with the rest."""
    counts = [int(round(steps * f)) for f in fractions]
    return counts + [steps - sum(counts)]


Fraction = Annotated[float, Field(gt=0, lt=1)]  # a stage's share of train.steps


def check_stages(section: str, fractions: dict[str, float], steps: int) -> None:
    """Every stage of train.steps, split by ``fractions`` (the section's keys -> values), gets a step."""
    counts = stage_steps(steps, list(fractions.values()))
    if min(counts) < 1:
        raise ConfigError(f"{section}.{'/'.join(fractions)} leave a stage of train.steps={steps} without steps "
                          f"(stages: {counts}); raise train.steps or change the fractions")


def logits_to(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Annotator logits at the labels' resolution (labels must stay labels, logits may be resampled)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class AnnotatorBaseline(Trainer):
    """LAGM's FPN annotator (same features, width, optimiser) and the pieces the baselines share."""

    @classmethod
    def new_annotator(cls, cfg, source, feature_index, num_classes) -> nn.Module:
        # built by Trainer.__init__ before the segmentor, as LAGM's: same seed, same initial annotator
        channels = [source.feature_channels()[i] for i in feature_index]
        return FPNAnnotator(channels, num_classes, cfg.annotator.width)

    def annotator_supervised_step(self, features: list[torch.Tensor], labels: torch.Tensor) -> float:
        """One step of plain CE between the annotator's logits and given labels (255 = ignore)."""
        A = self.annotator
        A.train()
        loss = F.cross_entropy(logits_to(A(features), labels.shape[-2:]), labels, ignore_index=255)
        self.minimise(loss, self.opt_a, A.parameters())
        return loss.item()

    def segmentor_step_frozen_annotator(self) -> dict[str, float]:
        """Stage (iii): LAGM's segmentor step; the annotator is done learning, so it labels in eval mode
        (BN running statistics: the labels the annotator metric and the downstream protocol score)."""
        self.annotator.eval()
        return self.segmentor_step_synthetic()


def supervised_step(net: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor,
                    apply) -> float:
    net.train()
    loss = F.cross_entropy(net(images), masks, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    apply(opt, list(net.parameters()))
    return loss.item()


# ---------------------------------------------------------------------------------------------- pseudo_label


@config_section
class PseudoLabelSettings:
    """LAGM Appendix C, Table C.6: (i) a teacher segmentor learns from the labelled images, (ii) the
    annotator learns from the teacher's labels of generated images, (iii) the segmentor learns from
    annotator-labelled generated images. The paper gives no stage lengths: train.steps is split in thirds."""

    teacher_fraction: Fraction = 1 / 3  # share of train.steps for stage (i) (paper: not given)
    annotator_fraction: Fraction = 1 / 3  # share for stage (ii); stage (iii) gets the rest (paper: not given)
    # BN statistics of the teacher when it labels generated images (paper: not given). "batch" normalises
    # with the generated batch's own statistics (the reference code runs S in train mode throughout), which
    # bridges the real -> generated shift: on the quickstart faces its labels score 9.7% FG-mIoU against the
    # true masks vs 4.0% with "running" (the real images' running statistics, i.e. eval mode).
    teacher_bn: Literal["batch", "running"] = "batch"

    @model_validator(mode="after")
    def _segmentor_stage_remains(self) -> PseudoLabelSettings:
        total = self.teacher_fraction + self.annotator_fraction
        if total >= 1:
            raise invalid("teacher_fraction + annotator_fraction", "must sum to less than 1 (the segmentor's "
                          f"stage gets the rest), got {total:g}")
        return self


class PseudoLabelTrainer(AnnotatorBaseline):
    """Table C.6: teacher segmentor -> pseudo labels of generated images -> annotator -> segmentor."""

    section, Settings = "pseudo_label", PseudoLabelSettings

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        p = cfg.pseudo_label
        check_stages("pseudo_label", {"teacher_fraction": p.teacher_fraction,
                                      "annotator_fraction": p.annotator_fraction}, cfg.train.steps)

    def build(self) -> None:
        super().build()
        p = self.cfg.pseudo_label
        # The teacher is its own network: self.segmentor (what is evaluated) learns only in stage (iii).
        self.teacher = self.new_segmentor()
        self.opt_t = make_optimizer(self.teacher.parameters(), self.cfg.train.segmentor_optim)
        teacher, annot, _ = stage_steps(self.cfg.train.steps, [p.teacher_fraction, p.annotator_fraction])
        self.stage_ends = (teacher, teacher + annot)

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's hard labels. With ``teacher_bn: batch`` BN normalises with the generated batch's
        statistics (other layers in eval mode: no dropout), on copies of the buffers so the teacher's running
        statistics stay those of the labelled images; with ``running`` the teacher is in eval mode."""
        T = self.teacher.eval()  # no dropout either way
        with torch.no_grad():
            if self.cfg.pseudo_label.teacher_bn == "running":
                return T(images).argmax(1)
            for m in T.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
            state = {**dict(T.named_parameters()), **{n: b.clone() for n, b in T.named_buffers()}}
            return functional_call(T, state, (images,)).argmax(1)

    def method_step(self) -> dict[str, float]:
        if self.step <= self.stage_ends[0]:
            return {"loss/teacher": supervised_step(self.teacher, self.opt_t, *self.labelled_batch(), self._apply)}
        if self.step <= self.stage_ends[1]:
            images, features = self.synthetic_batch()  # a fresh generated batch each step
            return {"loss/annotator": self.annotator_supervised_step(features, self.pseudo_labels(images))}
        return self.segmentor_step_frozen_annotator()

    def method_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "opt_t": self.opt_t.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.opt_t.load_state_dict(state["opt_t"])


# ---------------------------------------------------------------------------------------------- inversion


@config_section
class InversionSettings:
    """LAGM Appendix C, Table C.5: project the labelled images into the generator (the StyleGAN2-ADA
    projector of Karras et al. 2020b), train the annotator on the projections' features with the real
    masks, then the segmentor on annotator-labelled generated images."""

    space: Literal["w", "w+"] = "w"  # projector.py optimises one w for every layer; "w+" one per layer
    projection_steps: Annotated[int, Field(ge=1)] = 1000  # projector.py's num_steps; not counted in train.steps
    # projector.py's initial_learning_rate (Adam, ramped up then cosine down)
    projection_lr: Annotated[float, Field(gt=0)] = 0.1
    # projector.py's initial_noise_factor: w jitter, x std of w, fades out
    projection_noise: Annotated[float, Field(ge=0)] = 0.05
    w_avg_samples: Annotated[int, Field(ge=2)] = 10_000  # projector.py: samples that estimate the mean and spread of w
    # images projected together (independent latents; bounds memory)
    projection_batch_size: Annotated[int, Field(ge=1)] = 16
    # share of train.steps for the annotator, the rest the segmentor (paper: not given)
    annotator_fraction: Fraction = 0.5


def w_statistics(G: nn.Module, n: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Mean w and its spread (root mean squared distance to the mean) over n latents, as projector.py."""
    z = torch.randn(n, G.z_dim, generator=generator).to(next(G.parameters()).device)
    with torch.no_grad():
        w = G.mapping(z, None)[:, 0].double()  # untruncated: the projector searches the whole w space
    w_avg = w.mean(0)
    w_std = ((w - w_avg).square().sum() / n).sqrt().item()
    return w_avg.float(), w_std


def project(G: nn.Module, targets: torch.Tensor, *, steps: int, lr: float, space: str, noise_factor: float,
            w_avg: torch.Tensor, w_std: float, generator: torch.Generator,
            noise_mode: str = "const") -> tuple[torch.Tensor, list[float]]:
    """StyleGAN2-ADA's projector with a pixel MSE (LPIPS is not available here): Adam on w (one per image,
    shared by every layer) or w+ (one per layer) from the mean w, with the learning-rate ramp and the fading
    w jitter of projector.py, no noise-map optimisation. Images are compared at the targets' resolution.

    targets [B, 3, r, r] in [-1, 1] -> (ws [B, num_ws, w_dim], mean MSE per step). Each image's latent gets the
    gradient it would get alone (per-image means are summed), so batching does not change the result."""
    B, L = len(targets), G.num_ws
    start = w_avg.reshape(1, 1, -1).repeat(B, 1 if space == "w" else L, 1)
    w_opt = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=lr)
    history: list[float] = []
    for i in range(steps):
        t = i / steps
        noise_scale = w_std * noise_factor * max(0.0, 1.0 - t / NOISE_RAMP) ** 2
        ramp = 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / LR_RAMPDOWN) * math.pi)
        for group in opt.param_groups:
            group["lr"] = lr * ramp * min(1.0, t / LR_RAMPUP)
        w_noise = torch.randn(w_opt.shape, generator=generator).to(w_opt.device) * noise_scale
        ws = (w_opt + w_noise).expand(B, L, -1) if space == "w" else w_opt + w_noise
        images = to_size(G.synthesis(ws, noise_mode=noise_mode), targets.shape[-1])
        per_image = (images - targets).square().flatten(1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        opt.step()
        history.append(per_image.mean().item())
    return w_opt.detach().expand(B, L, -1).clone(), history


def reconstruction_mse(G: nn.Module, ws: torch.Tensor, targets: torch.Tensor, noise_mode: str = "const") -> float:
    with torch.no_grad():
        images = to_size(G.synthesis(ws, noise_mode=noise_mode), targets.shape[-1])
    return (images - targets).square().mean().item()


class InversionTrainer(AnnotatorBaseline):
    """Table C.5: the labelled images' projections give generator features for the real masks."""

    section, Settings = "inversion", InversionSettings

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_stages("inversion", {"annotator_fraction": cfg.inversion.annotator_fraction}, cfg.train.steps)

    def build(self) -> None:
        super().build()
        annot, _ = stage_steps(self.cfg.train.steps, [self.cfg.inversion.annotator_fraction])
        self.annotator_end = annot
        self.ws: torch.Tensor | None = None  # projected latents of the labelled images, made at step 1
        self.projection: dict[str, float] = {}

    def project_labelled(self) -> dict[str, float]:
        """Projects every labelled image once (batch by batch), from its own seeded stream."""
        inv, G = self.cfg.inversion, self.source.G
        rng = torch.Generator().manual_seed(self.cfg.run.seed + PROJECTION_SEED_OFFSET)
        w_avg, w_std = w_statistics(G, inv.w_avg_samples, rng)
        images = self.splits.train_images.to(self.device)
        ws, first, last = [], [], []
        for i in range(0, len(images), inv.projection_batch_size):
            chunk = images[i:i + inv.projection_batch_size]
            w, history = project(G, chunk, steps=inv.projection_steps, lr=inv.projection_lr, space=inv.space,
                                 noise_factor=inv.projection_noise, w_avg=w_avg.to(self.device), w_std=w_std,
                                 generator=rng, noise_mode=self.source.noise_mode)
            ws.append(w)
            first.append(history[0] * len(chunk))
            last.append(reconstruction_mse(G, w, chunk, self.source.noise_mode) * len(chunk))
        self.ws = torch.cat(ws)
        self.projection = {"projection/mse_start": sum(first) / len(images), "projection/mse": sum(last) / len(images)}
        return dict(self.projection)

    def labelled_indices(self) -> torch.Tensor:
        n, b = len(self.splits.train_images), self.cfg.train.labelled_batch_size
        return torch.arange(n) if b == 0 or b >= n else torch.randperm(n, generator=self.rng)[:b]

    def method_step(self) -> dict[str, float]:
        metrics = self.project_labelled() if self.ws is None else {}
        if self.step <= self.annotator_end:
            idx = self.labelled_indices()
            with torch.no_grad():
                _, features = self.source.G.synthesis(self.ws[idx.to(self.ws.device)], noise_mode=self.source.noise_mode,
                                                      return_features=True)
            features = feature_select([f.float() for f in features], self.feature_index)
            masks = self.splits.train_masks[idx].to(self.device)
            metrics["loss/annotator"] = self.annotator_supervised_step(features, masks)
            return metrics
        metrics.update(self.segmentor_step_frozen_annotator())
        return metrics

    def method_state(self) -> dict[str, Any]:
        return {"ws": None if self.ws is None else self.ws.cpu(), "projection": self.projection}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.ws = None if state.get("ws") is None else state["ws"].to(self.device)
        self.projection = dict(state.get("projection") or {})


# ---------------------------------------------------------------------------------------------- maml


@config_section
class MAMLSettings:
    """LAGM Appendix C, Algorithm 2 and Table C.7: the annotator learns through K unrolled SGD steps of
    the segmentor on its labels, scored by the labelled loss; the segmentor then steps as in LAGM."""

    # Algorithm 2's K (inner-loop steps). Not train.K, which keeps Algorithm 1's meaning (segmentor
    # updated every train.K annotator steps; Algorithm 2 is train.K = 1). Table C.7 runs 1 and 2.
    unroll_steps: Annotated[int, Field(ge=1)] = 1
    # Algorithm 2's eta_i; "we use eta_i = 0.1 in MAML for all experiments"
    inner_lr: Annotated[float, Field(gt=0)] = 0.1


def maml_meta_loss(segmentor: nn.Module, annotator: nn.Module, syn_images: torch.Tensor,
                   features: Sequence[torch.Tensor], images: torch.Tensor, masks: torch.Tensor,
                   inner_lr: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2, lines 2-9: L_l(theta_K(w)), differentiable w.r.t. the annotator's parameters.

    theta_0 = theta (detached: the outer gradient goes to the annotator only); theta_k = theta_{k-1} -
    inner_lr * grad CE_soft(S_theta(x_g), A_w(h)) on one synthetic batch, with the graph kept; then plain CE
    of S_theta_K on the labelled batch. The networks run through functional_call in their current mode
    (train: BN batch statistics, as LAGM's matching phase) on *copies* of the segmentor's buffers, so the
    unroll leaves the real running statistics alone. Returns (meta loss, synthetic loss at theta_0)."""
    names = [n for n, _ in segmentor.named_parameters()]
    theta = [p.detach().requires_grad_(True) for p in segmentor.parameters()]
    buffers = {n: b.clone() for n, b in segmentor.named_buffers()}
    annot_logits = annotator(list(features))
    first = None
    for _ in range(steps):
        logits = functional_call(segmentor, {**dict(zip(names, theta)), **buffers}, (syn_images,))
        loss = gm.synthetic_loss(logits, annot_logits, "soft")  # soft: the labels stay differentiable in w
        first = loss if first is None else first
        grads = torch.autograd.grad(loss, theta, create_graph=True, allow_unused=True, materialize_grads=True)
        theta = [p - inner_lr * g for p, g in zip(theta, grads)]
    logits = functional_call(segmentor, {**dict(zip(names, theta)), **buffers}, (images,))
    return F.cross_entropy(logits, masks, ignore_index=255), first


class MAMLTrainer(AnnotatorBaseline):
    """Algorithm 2 (K-step MAML). theta' is a throw-away copy; theta itself then takes LAGM's segmentor step
    on a fresh synthetic batch (every train.K steps, Algorithm 2 being train.K = 1)."""

    section, Settings = "maml", MAMLSettings

    def method_step(self) -> dict[str, float]:
        m = self.cfg.maml
        A, S = self.annotator, self.segmentor
        A.train()
        S.train()
        syn_images, features = self.synthetic_batch()  # Algorithm 2 samples B_g, then B_l
        images, masks = self.labelled_batch()
        meta, inner = maml_meta_loss(S, A, syn_images, features, images, masks, m.inner_lr, m.unroll_steps)
        a_params = list(A.parameters())
        grads = torch.autograd.grad(meta, a_params, allow_unused=True)
        for p, g in zip(a_params, grads):
            p.grad = g
        self._apply(self.opt_a, a_params)
        metrics = {"loss/meta": meta.item(), "loss/synthetic_inner": inner.item()}
        if self.step % self.cfg.train.K == 0:
            metrics.update(self.segmentor_step_synthetic())
        return metrics
