"""The trained networks as MLflow models: ``mlflow.pytorch.log_model`` with a signature and an input
example, so the run's "Logged models" lists them and ``mlflow.pytorch.load_model`` gives them back.

* ``segmentor``: images ``[N, 3, S, S]`` (in [-1, 1], S = data.seg_resolution) -> part logits.
* ``annotator`` (LAGM's FPN annotator; the baselines' own annotators are not logged as models):
  generator features packed into one tensor (models.annotator.PackedAnnotator.pack: every block's
  output upsampled to the finest and concatenated on channels) -> part logits.

Both are the weights of the best validation step. mlflow.pytorch pickles the module (its classes are
lagm_ray's, importable wherever lagm_ray is installed), so loading one unpickles it: load models only
from your own tracking store."""

from __future__ import annotations

import copy
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature

from .models.annotator import FPNAnnotator, PackedAnnotator
from .synthetic import feature_select, to_size

EXAMPLE_SEED = 12345  # the input example's latents: any fixed seed
EXAMPLE_SIZE = 2  # images in the input example


def best_networks(trainer: Any) -> tuple[torch.nn.Module | None, torch.nn.Module]:
    """(annotator or None, segmentor) with the weights of the best validation step (the current ones
    before any evaluation), copied to the CPU in eval mode."""
    nets = []
    for name in ("annotator", "segmentor"):
        net = getattr(trainer, name)
        if net is None:
            nets.append(None)
            continue
        net = copy.deepcopy(net).cpu()
        if trainer.best.get(name) is not None:
            net.load_state_dict(trainer.best[name])
        nets.append(net.eval().requires_grad_(False))
    return nets[0], nets[1]


def example_inputs(trainer: Any, n: int = EXAMPLE_SIZE) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
    """(the annotator's feature maps of ``n`` generated samples, or None when it is not an FPN annotator
    on a generator; the segmentor's input: ``n`` validation images): the models' input examples."""
    images = to_size(trainer.splits.val_images[:n], trainer.seg_size).float().cpu()
    if not isinstance(trainer.annotator, FPNAnnotator) or trainer.source is None:
        return None, images
    with torch.no_grad():
        batch = trainer.source.sample(n, seed=EXAMPLE_SEED)
    return [f.float().cpu() for f in feature_select(batch.features, trainer.feature_index)], images


def log_models(trainer: Any) -> dict[str, str]:
    """Log the best annotator (when the method has one) and segmentor to the active run; returns
    name -> model URI."""
    annotator, segmentor = best_networks(trainer)
    features, images = example_inputs(trainer)
    models: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {"segmentor": (segmentor, images)}
    if features is not None:
        packed = PackedAnnotator(annotator, [f.shape[-2:] for f in features]).eval()
        models["annotator"] = (packed, PackedAnnotator.pack(features))
    uris = {}
    for name, (model, example) in models.items():
        with torch.no_grad():
            out = model(example)
        x = example.numpy()
        # pip_requirements given: MLflow would otherwise load the model in a subprocess to infer them
        info = mlflow.pytorch.log_model(model, name=name, signature=infer_signature(x, out.numpy()),
                                        input_example=x, pip_requirements=[f"torch=={torch.__version__}"])
        uris[name] = info.model_uri
    return uris
