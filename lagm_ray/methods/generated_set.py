"""The shape DatasetGAN and RepurposeGAN share: label, generate, distil.

    steps 1..L       train the labeller (self.annotator) on a few annotated generated images
    step L+1         generate ``set_size`` images, label them with the labeller, keep them in memory
                     (uint8 images, targets at the segmentor's resolution)
    steps L+1..T     train the segmentor on minibatches of that set

The set is not checkpointed: it is a function of the labeller's weights (checkpointed as the annotator)
and of its own seed, so a resumed run rebuilds the same set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..synthetic import feature_select, to_size
from ..trainer import Trainer
from .pixel_features import images_from_uint8, images_to_uint8

SET_SEED = 5_550_001  # the generated set's latents: their own stream, offset by run.seed


@dataclass
class GeneratedSet:
    images: torch.Tensor  # [n, 3, S, S] uint8
    targets: torch.Tensor  # [n, S, S] uint8 labels, or [n, C, S, S] float16 logits
    dropped: int = 0  # images filtered out

    def __len__(self) -> int:
        return len(self.images)


class LabelThenDistill(Trainer):
    """Subclasses set ``self.annotator`` (the labeller) in build() and implement
    ``labeller_step``, ``label_generated`` and ``segmentor_loss``."""

    generated: GeneratedSet | None = None

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        labeller, steps = getattr(cfg, cls.section).labeller_steps, cfg.train.steps
        if labeller >= steps:
            raise ConfigError(f"{cls.section}.labeller_steps must be below train.steps ({steps}): the steps after "
                              "it train the segmentor")

    # The stage keys live in the method's own config section (the subclass's ``section``): labeller_steps,
    # set_size, generate_batch_size and, where the method filters, filter_ratio.
    @property
    def settings(self) -> Any:
        return getattr(self.cfg, self.section)

    @property
    def labeller_steps(self) -> int:
        return self.settings.labeller_steps

    @property
    def set_size(self) -> int:
        return self.settings.set_size

    @property
    def generate_batch_size(self) -> int:
        return self.settings.generate_batch_size

    @property
    def filter_ratio(self) -> float:
        return getattr(self.settings, "filter_ratio", 0.0)

    def labeller_step(self) -> dict[str, float]:
        raise NotImplementedError

    def label_generated(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets at the segmentor's resolution for a generated batch (uint8 labels or float16 logits), and a
        per-image uncertainty (higher = dropped first) or None."""
        raise NotImplementedError

    def segmentor_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ the loop

    def method_step(self) -> dict[str, float]:
        if self.step <= self.labeller_steps:
            return self.labeller_step()
        metrics: dict[str, float] = {}
        if self.generated is None:
            t0 = time.perf_counter()
            self.generated = self.build_generated_set()
            metrics.update({"time/build_set_s": time.perf_counter() - t0, "set/size": float(len(self.generated)),
                            "set/dropped": float(self.generated.dropped)})
        metrics.update(self.segmentor_step_on_set())
        return metrics

    @torch.no_grad()
    def build_generated_set(self) -> GeneratedSet:
        """``set_size`` generated images labelled by the labeller in eval mode; the ``filter_ratio`` most
        uncertain are dropped. Deterministic given the labeller's weights and run.seed."""
        rng = torch.Generator().manual_seed(SET_SEED + self.cfg.run.seed)
        was_training = self.annotator.training
        self.annotator.eval()
        images, targets, scores = [], [], []
        n, bs = self.set_size, self.generate_batch_size
        for i in range(0, n, bs):
            batch = self.source.sample(min(bs, n - i), generator=rng)
            t, score = self.label_generated(feature_select(batch.features, self.feature_index))
            images.append(images_to_uint8(to_size(batch.images, self.seg_size)).cpu())
            targets.append(t.cpu())
            if score is not None:
                scores.append(score.cpu())
        self.annotator.train(was_training)
        images_t, targets_t = torch.cat(images), torch.cat(targets)
        drop = int(self.filter_ratio * n) if scores else 0
        if drop:
            # stable order: the kept images in generation order
            keep = torch.sort(torch.argsort(torch.cat(scores), stable=True)[:n - drop]).values
            images_t, targets_t = images_t[keep], targets_t[keep]
        return GeneratedSet(images_t, targets_t, drop)

    def segmentor_step_on_set(self) -> dict[str, float]:
        S, data = self.segmentor, self.generated
        S.train()
        idx = torch.randperm(len(data), generator=self.rng)[:self.cfg.train.synthetic_batch_size]
        images = images_from_uint8(data.images[idx]).to(self.device)
        loss = self.segmentor_loss(images, data.targets[idx].to(self.device))
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/segmentor": loss.item()}

    def method_state(self) -> dict[str, Any]:
        return {}  # the set is rebuilt from the checkpointed labeller on the first segmentor step
