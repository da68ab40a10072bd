"""Algorithm 1 of LAGM, as a loop one can read top to bottom.

    for t in 1..T:
        g_real = grad_theta CE(S(x_l), y_l)                       labelled batch, no graph
        x_g, h = G(z);  g_syn = grad_theta CE_soft(S(x_g), A(h))  synthetic batch, with graph
        w <- w - eta_a grad_w D(g_syn, g_real)                    annotator step
        if t % K == 0:                                            every K steps
            x_g, h = G(z');  theta <- theta - eta_s grad_theta CE_soft(S(x_g), A(h))

``method: supervised`` trains the same segmentor on the labelled images alone, same budget.
The baselines (lagm_ray/methods/) subclass :class:`Trainer` and override :meth:`Trainer.build` and
:meth:`Trainer.method_step`; :func:`lagm_ray.methods.build_trainer` picks the class for ``train.method``.

The trainer knows nothing of Ray or MLflow. They plug in through :class:`Callback` (logging,
checkpoints, reports) and ``grad_sync`` (averaging gradients across data-parallel workers).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import gm
from .callbacks import Callback, TrainResult
from .config import resolve_device
from .data.datasets import LabelledSplits, load_labelled_splits
from .errors import ConfigError
from .evaluation import annotator_confusion, picture_grid, segmentor_confusion
from .metrics import summarize
from .models.annotator import FPNAnnotator
from .models.segmentors import (
    UnknownBlockError,
    blocks_of_kind,
    build_segmentor,
    load_torchvision_weights,
    select_matched_parameters,
)
from .seeding import rng_state, seed_everything, set_rng_state
from .storage import load_checkpoint, save_checkpoint
from .synthetic import (
    SyntheticSource,
    check_generator_fits,
    feature_index,
    feature_select,
    load_generator,
    to_size,
)
from .viz import confusion_matrix_figure

CHECKPOINT_FORMAT = "lagm_ray.trainer/v1"
BEST_FORMAT = "lagm_ray.best/v1"
EVAL_SEED = 987_654  # generated samples for evaluation come from their own stream
POOL_SEED = 555_555  # and so does train.synthetic_pool, so a resumed run rebuilds the same pool


def make_optimizer(params: Iterable[nn.Parameter], o) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class Trainer:
    """LAGM and supervised-only. Subclasses (the baselines) keep the loop, evaluation, checkpoints and
    callbacks, and override the hooks: ``uses_generator``, ``new_annotator``, ``build``, ``method_step``,
    ``total_steps``, ``method_state`` / ``load_method_state``. A subclass that labels generated images
    sets ``self.annotator`` (features -> logits) and ``self.feature_index``, and gets the annotator-vs-truth
    metrics, the pictures and the downstream protocol for free.

    A subclass with settings of its own names its config section (``section``, the top-level key), its
    pydantic dataclass (``Settings``) and extends ``check``; lagm_ray.methods registers it under a method name.
    ``cfg`` is a lagm_ray.methods.Config (not imported here: that module imports this one)."""

    section: str | None = None  # lagm and supervised read only the shared sections
    Settings: type | None = None

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Checks across sections when this class runs ``cfg`` (after each section checked its own keys);
        raises ConfigError naming the key. Subclasses add theirs after ``super().check(cfg)``."""
        try:
            valid_blocks = blocks_of_kind(cfg.segmentor.kind)
        except ValueError as e:
            raise ConfigError(f"segmentor.kind: {e}") from None
        bad = [b for b in cfg.train.matched_blocks if b not in valid_blocks]
        if bad:
            raise ConfigError(f"train.matched_blocks unknown block {bad[0]!r} for {cfg.segmentor.kind}; "
                              f"valid blocks: {', '.join(valid_blocks)}")

    def __init__(self, cfg: Any, *, device: torch.device | str | None = None, rank: int = 0,
                 grad_sync: Callable[[Sequence[nn.Parameter]], None] | None = None,
                 splits: LabelledSplits | None = None, source: SyntheticSource | None = None):
        self.cfg = cfg
        t = cfg.train
        self.device = torch.device(device) if device is not None else resolve_device(cfg.run.device)
        self.rank = rank
        self.grad_sync = grad_sync
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        # Every worker builds the same initial networks (seeded by run.seed alone) but samples its
        # own latents and labelled batches from a per-worker stream.
        seed_everything(cfg.run.seed)
        self.rng = torch.Generator().manual_seed(cfg.run.seed + 1_000_003 * rank)

        self.splits = splits or load_labelled_splits(cfg.data)
        self.class_names = self.splits.class_names
        self.num_classes = len(self.class_names)
        self.seg_size = cfg.data.seg_resolution or cfg.data.resolution
        self.is_lagm = t.method == "lagm"
        # from the labelled training masks only: the few labels are all a method may know
        self.class_weights = gm.class_weights(self.splits.train_masks, self.num_classes, t.class_weight_power)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(self.device)

        self.source: SyntheticSource | None = None
        self.feature_index: list[int] | None = None
        self._pool: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # train.synthetic_pool, made on first use
        if self.uses_generator(cfg):
            self.source = source or self._load_source()
            self.feature_index = self._feature_index(cfg.annotator.feature_resolutions)

        self.annotator: nn.Module | None = None  # generator features -> logits, when the method has one
        if self.uses_generator(cfg):
            # built before the segmentor: the order fixes what the seeded RNG gives each network
            self.annotator = self.new_annotator(cfg, self.source, self.feature_index, self.num_classes)
            if self.annotator is not None:
                self.annotator.to(self.device)
        self.segmentor = self.new_segmentor()
        try:
            self.matched = select_matched_parameters(self.segmentor, t.matched_blocks)
        except UnknownBlockError as e:
            raise ConfigError(f"train.matched_blocks: {e}") from e
        self.matched_params = [p for _, p in self.matched]
        self.opt_s = make_optimizer(self.segmentor.parameters(), t.segmentor_optim)

        self.opt_a: torch.optim.Optimizer | None = None
        self.build()
        self.step = 0
        self.best: dict[str, Any] = {"step": 0, "metric": -1.0, "metrics": {}}
        self.history: list[dict[str, float]] = []
        self.step_seconds = [0.0, 0]  # sum and count of this process's step times (not checkpointed)

    # ------------------------------------------------------------------------------ method hooks

    @classmethod
    def uses_generator(cls, cfg: Any) -> bool:
        """Whether the method samples G (a classmethod: the driver checks the generator before any build)."""
        return cfg.train.method != "supervised"

    @property
    def total_steps(self) -> int:
        return self.cfg.train.steps

    @classmethod
    def new_annotator(cls, cfg: Any, source: SyntheticSource, feature_index: Sequence[int],
                      num_classes: int) -> nn.Module | None:
        """The method's annotator (generator features -> logits), untrained; None if it has none.
        `lagm generate` rebuilds a run's annotator through this before loading its weights."""
        if cfg.train.method != "lagm":
            return None
        channels = [source.feature_channels()[i] for i in feature_index]
        return FPNAnnotator(channels, num_classes, cfg.annotator.width)

    def build(self) -> None:
        """The method's other networks and its optimisers, after the annotator (``new_annotator``) and
        the segmentor exist. LAGM: the annotator's optimiser."""
        if self.annotator is not None:
            self.opt_a = make_optimizer(self.annotator.parameters(), self.cfg.train.annotator_optim)

    def method_step(self) -> dict[str, float]:
        """One training step of the method; returns metrics to log."""
        if not self.is_lagm:
            return self.segmentor_step_supervised()
        t0 = time.perf_counter()
        metrics = self.annotator_step()
        t1 = time.perf_counter()
        metrics["time/annotator_phase_s"] = t1 - t0
        if self.step % self.cfg.train.K == 0:
            for _ in range(self.cfg.train.segmentor_steps):
                metrics.update(self.segmentor_step_synthetic())
            metrics["time/segmentor_phase_s"] = time.perf_counter() - t1
        return metrics

    def method_state(self) -> dict[str, Any]:
        """Method state beyond segmentor, annotator and their optimisers (checkpointed)."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------------------ networks

    def _load_source(self) -> SyntheticSource:
        g, cfg = self.cfg.generator, self.cfg
        G, meta = load_generator(g.checkpoint, self.device)
        check_generator_fits(g.checkpoint, G.img_resolution, meta.get("class_names"), cfg.data.resolution,
                             self.class_names)
        return SyntheticSource(G, meta, truncation_psi=g.truncation_psi, truncation_cutoff=g.truncation_cutoff,
                               noise_mode=g.noise_mode, resolution=cfg.data.resolution)

    def new_segmentor(self) -> nn.Module:
        """A segmentor as configured (kind, width, scratch or a weights file), on the device."""
        s = self.cfg.segmentor
        segmentor = build_segmentor(s.kind, self.num_classes, width=s.width)
        if s.init != "scratch":
            load_torchvision_weights(segmentor, s.init)
        return segmentor.to(self.device)

    # ------------------------------------------------------------------------------ data

    def _feature_index(self, resolutions: Sequence[int]) -> list[int]:
        return feature_index(self.source.block_resolutions, resolutions)

    def labelled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.splits.train_images)
        b = self.cfg.train.labelled_batch_size
        idx = torch.arange(n) if b == 0 or b >= n else torch.randperm(n, generator=self.rng)[:b]
        return self.splits.train_images[idx].to(self.device), self.splits.train_masks[idx].to(self.device)

    def synthetic_batch(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Generated images at the segmentor's resolution and the generator features: a fresh G(z), or
        a random batch of the pool when ``train.synthetic_pool`` is set."""
        n = self.cfg.train.synthetic_batch_size
        if self.cfg.train.synthetic_pool:
            images, features = self.synthetic_pool()
            idx = torch.randperm(len(images), generator=self.rng)[:n].to(images.device)
            return images[idx], [f[idx] for f in features]
        return self._generate(n, self.rng)

    def _generate(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """n fresh samples of G: images at the segmentor's resolution, the annotator's features."""
        batch = self.source.sample(n, generator=rng)
        return to_size(batch.images, self.seg_size), feature_select(batch.features, self.feature_index)

    def synthetic_pool(self, chunk: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``train.synthetic_pool`` samples, generated once from their own seeded stream (never from
        ``self.rng``: a run resumed from a checkpoint rebuilds the very same pool)."""
        if self._pool is None:
            size = self.cfg.train.synthetic_pool
            rng = torch.Generator().manual_seed(POOL_SEED + self.cfg.run.seed + 1_000_003 * self.rank)
            images, features = zip(*(self._generate(min(chunk, size - i), rng) for i in range(0, size, chunk)))
            self._pool = torch.cat(images), [torch.cat(f) for f in zip(*features)]
        return self._pool

    # ------------------------------------------------------------------------------ steps

    def _apply(self, opt: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> None:
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad)  # as the reference code: one bad batch must not poison the weights
        if self.grad_sync is not None:
            self.grad_sync(params)
        opt.step()

    def minimise(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
        """One step of ``opt`` on ``loss``: fresh gradients, then :meth:`_apply` (NaN-cleaned, averaged
        across workers). Every method's plain optimiser steps go through here."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self._apply(opt, list(params))

    def annotator_step(self) -> dict[str, float]:
        t = self.cfg.train
        A, S = self.annotator, self.segmentor
        A.train()
        S.train()  # BN uses batch statistics and dropout is on, as in the reference code
        images, masks = self.labelled_batch()
        with gm.only_these_require_grad(S, self.matched_params):
            g_real = gm.real_gradient(S, self.matched_params, images, masks, self.class_weights)
            t0 = time.perf_counter()
            syn_images, features = self.synthetic_batch()
            t_gen = time.perf_counter() - t0
            g_syn, loss_syn = gm.synthetic_gradient(S, self.matched_params, syn_images, A(features),
                                                    self.class_weights)
            loss_gm = gm.matching_distance(g_syn, g_real, t.node_reduction, t.count_1d_tensors)
        a_params = list(A.parameters())
        # autograd.grad, not backward(): the segmentor's own .grad must stay untouched.
        grads = torch.autograd.grad(loss_gm, a_params, allow_unused=True)
        for p, g in zip(a_params, grads):
            p.grad = g
        self._apply(self.opt_a, a_params)
        return {"loss/gm": loss_gm.item(), "loss/synthetic_gm_phase": loss_syn.item(), "time/generator_s": t_gen}

    def segmentor_step_synthetic(self) -> dict[str, float]:
        A, S = self.annotator, self.segmentor
        S.train()
        syn_images, features = self.synthetic_batch()
        with torch.no_grad():
            annot_logits = A(features)
        loss = gm.synthetic_loss(S(syn_images), annot_logits, self.cfg.train.synthetic_target)
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/segmentor": loss.item()}

    def segmentor_step_supervised(self) -> dict[str, float]:
        S = self.segmentor
        S.train()
        images, masks = self.labelled_batch()
        loss = F.cross_entropy(S(images), masks, weight=self.class_weights, ignore_index=255)
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/segmentor": loss.item()}

    def train_step(self) -> dict[str, float]:
        self.step += 1
        t0 = time.perf_counter()
        metrics = self.method_step()
        metrics["time/step_s"] = time.perf_counter() - t0
        self.step_seconds[0] += metrics["time/step_s"]
        self.step_seconds[1] += 1
        return metrics

    @property
    def mean_step_seconds(self) -> float | None:
        return self.step_seconds[0] / self.step_seconds[1] if self.step_seconds[1] else None

    # ------------------------------------------------------------------------------ evaluation

    def evaluate(self, pictures: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
        """val and test metrics of the segmentor (and the annotator vs truth when available);
        remembers the best validation step (the paper selects checkpoints on FG-mIoU)."""
        e, sp = self.cfg.eval, self.splits
        out: dict[str, float] = {}
        cm_val = segmentor_confusion(self.segmentor, sp.val_images, sp.val_masks, self.num_classes)
        cm_test = segmentor_confusion(self.segmentor, sp.test_images, sp.test_masks, self.num_classes)
        for split, cm in (("val", cm_val), ("test", cm_test)):
            for k, v in summarize(cm, self.class_names, e.absent_class).items():
                out[f"{split}/{k}"] = v
        if self.annotator is not None and self.source.has_true_masks:
            cm_a = annotator_confusion(self.annotator, self.source, e.num_annotator_samples, EVAL_SEED,
                                       self.num_classes, feature_index=self.feature_index)
            for k, v in summarize(cm_a, self.class_names, e.absent_class).items():
                out[f"annotator/{k}_vs_truth"] = v
        if out["val/fg_miou"] > self.best["metric"]:
            self.best = {"step": self.step, "metric": out["val/fg_miou"], "metrics": dict(out),
                         "segmentor": copy.deepcopy(self.segmentor.state_dict()),
                         "annotator": copy.deepcopy(self.annotator.state_dict()) if self.annotator else None}
        self.history.append({"step": self.step, **out})
        pics: dict[str, Any] = {}
        if pictures:
            pics["samples"] = picture_grid(self.annotator, self.segmentor, self.source, sp.test_images,
                                           sp.test_masks, self.class_names, self.seg_size,
                                           feature_index=self.feature_index if self.annotator else None)
            pics["confusion_test"] = confusion_matrix_figure(cm_test, self.class_names)
        return out, pics

    def downstream(self, use_best: bool = True) -> dict[str, float]:
        """Table 1's protocol: label ``eval.downstream_images`` generated images with the (best) annotator,
        train a fresh segmentor of the same kind on them alone, report test metrics at its best val epoch."""
        # here, not at the top: lagm_ray.downstream also reads shard datasets (pyarrow), which training never needs
        from .downstream import synthetic_dataset, train_and_score

        if self.annotator is None:
            raise ConfigError(f"the downstream protocol needs an annotator; train.method {self.cfg.train.method!r} "
                              "has none")
        annotator = copy.deepcopy(self.annotator)
        if use_best and self.best.get("annotator") is not None:
            annotator.load_state_dict(self.best["annotator"])
        images, labels = synthetic_dataset(annotator, self.source, self.cfg.eval.downstream_images, self.seg_size,
                                           seed=EVAL_SEED + 1, feature_index=self.feature_index)
        return train_and_score(self.cfg, images, labels, self.splits, self.new_segmentor)

    def result(self) -> TrainResult:
        m = self.best["metrics"]
        metrics = {k: v for k, v in m.items() if not k.startswith("val/iou") and not k.startswith("test/iou/")}
        metrics.update({f"final/{k}": v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"})
        metrics["best_step"] = self.best["step"]
        return TrainResult(metrics=metrics, best_step=self.best["step"], history=list(self.history))

    # ------------------------------------------------------------------------------ the loop

    def fit(self, callbacks: Sequence[Callback] = (), pictures: bool = True) -> TrainResult:
        t = self.cfg.train
        total = self.total_steps
        pictures = pictures and any(cb.wants_pictures for cb in callbacks)  # drawing them costs seconds
        try:
            for cb in callbacks:
                cb.on_start(self)
            while self.step < total:
                metrics = self.train_step()
                step = self.step
                if step % t.log_interval == 0 or step == 1:
                    for cb in callbacks:
                        cb.on_log(step, metrics)
                # Only the first worker evaluates: every worker holds the same weights after averaging.
                if self.rank == 0 and (step % t.eval_interval == 0 or step == total):
                    want_pics = pictures and (step == total or (t.picture_interval and step % t.picture_interval == 0))
                    ev, pics = self.evaluate(pictures=bool(want_pics))
                    for cb in callbacks:
                        cb.on_eval(step, ev, pics)
                if step % t.checkpoint_interval == 0 or step == total:
                    for cb in callbacks:
                        cb.on_checkpoint(step, self)
            result = self.result()
            for cb in callbacks:
                cb.on_end(result)
        except BaseException as error:
            for cb in callbacks:  # every callback records the stop, even if one of them fails doing so
                try:
                    cb.on_abort(self.step, error)
                except Exception as e:  # noqa: BLE001 - the original error is the one to raise
                    error.add_note(f"while recording it, {type(cb).__name__} failed: {type(e).__name__}: {e}")
            raise
        return result

    # ------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "segmentor": self.segmentor.state_dict(),
            "annotator": self.annotator.state_dict() if self.annotator else None,
            "opt_s": self.opt_s.state_dict(),
            "opt_a": self.opt_a.state_dict() if self.opt_a else None,
            "rng": {"trainer": self.rng.get_state(), **rng_state()},
            "best": self.best,
            "history": self.history,
            "method": self.method_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state`` as loaded on the CPU: the networks and optimisers copy each tensor to their device, and
        the RNG states must stay CPU ByteTensors (a checkpoint mapped to CUDA fails torch.Generator.set_state)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a lagm_ray trainer checkpoint (format {state.get('format')!r})")
        self.segmentor.load_state_dict(state["segmentor"])
        self.opt_s.load_state_dict(state["opt_s"])
        if self.annotator is not None:
            self.annotator.load_state_dict(state["annotator"])
            self.opt_a.load_state_dict(state["opt_a"])
        self.rng.set_state(state["rng"]["trainer"])
        set_rng_state({k: v for k, v in state["rng"].items() if k != "trainer"})
        self.step = int(state["step"])
        self.best = state["best"]
        self.history = list(state["history"])
        self.load_method_state(state.get("method") or {})

    def save(self, path: str | Path) -> None:
        save_checkpoint(self.state_dict(), path)

    def save_best(self, path: str | Path) -> None:
        """Annotator and segmentor at the best validation step: what `lagm evaluate` and
        `lagm generate` take."""
        save_checkpoint({"format": BEST_FORMAT, "method": self.cfg.train.method, "config": self.cfg.to_dict(), "step": self.best["step"],
                         "metrics": self.best["metrics"], "class_names": self.class_names,
                         "segmentor": self.best.get("segmentor") or self.segmentor.state_dict(),
                         # before any evaluation there is no best step yet: the current weights
                         "annotator": (self.best.get("annotator") or self.annotator.state_dict())
                         if self.annotator else None}, path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path))  # on the CPU: see load_state_dict


class LocalCheckpoints(Callback):
    """Writes ``last.pt`` (everything needed to resume) at every checkpoint interval and
    ``best.pt`` (annotator + segmentor at the best validation step) at the end, atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_checkpoint(self, step: int, trainer: Trainer) -> None:
        trainer.save(self.directory / "last.pt")

    def on_end(self, result: TrainResult) -> None:
        self.trainer.save_best(self.directory / "best.pt")
