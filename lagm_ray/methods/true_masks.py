"""``true_masks``: the synthetic-data ceiling, on the embedded world only.

The segmentor trains on generated images labelled with their *exact* masks (the render of each
latent's scene), with LAGM's synthetic batch size and optimiser. No annotator can give better labels
than these, so this run bounds what LAGM and every other generate-then-train method can reach with a
given generator. If it scores no better than supervised-only, the generator's images, not the
annotator, are what holds the synthetic methods back. No real labelled image is used.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..data.datasets import resize_labels
from ..errors import ConfigError
from ..synthetic import to_size
from ..trainer import Trainer


class TrueMasksTrainer(Trainer):
    def build(self) -> None:
        if not self.source.has_true_masks:
            raise ConfigError(f"train.method true_masks needs a generator with exact masks (the embedded "
                              f"world at generator.truncation_psi 1); {self.cfg.generator.checkpoint} has none")

    def method_step(self) -> dict[str, float]:
        S = self.segmentor
        S.train()
        batch = self.source.sample(self.cfg.train.synthetic_batch_size, generator=self.rng)
        images = to_size(batch.images, self.seg_size)
        masks = resize_labels(batch.true_masks, self.seg_size)
        loss = F.cross_entropy(S(images), masks)
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/segmentor": loss.item()}
