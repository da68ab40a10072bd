"""The trained annotator and segmentor as MLflow models: logged at the end of a training with a signature
and an input example, listed as the run's logged models, and loaded back (mlflow.pytorch and pyfunc)
to give the same predictions as the trainer's best networks. Real MLflow on SQLite, a tiny config."""

from __future__ import annotations

import copy

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from lagm_ray.methods import build_trainer
from lagm_ray.mlflow_models import example_inputs
from lagm_ray.models.annotator import PackedAnnotator
from lagm_ray.tracking import MLflowCallback


def best(trainer, name):
    net = copy.deepcopy(getattr(trainer, name)).cpu()
    net.load_state_dict(trainer.best[name])
    return net.eval()


def test_annotator_and_segmentor_are_logged_models_that_load_back_to_the_same_predictions(tiny_config, tmp_path):
    cfg = tiny_config(**{"tracking.enabled": True, "tracking.experiment": "models"})
    trainer = build_trainer(cfg)
    callback = MLflowCallback(cfg)
    trainer.fit([callback])
    uri = cfg.tracking.uri
    client = MlflowClient(uri)
    run = client.get_run(callback.run_id)
    models = {m.name: m for m in client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")}
    assert set(models) == {"annotator", "segmentor"}
    # the labelled set's splits as MLflow datasets, with digests: the run page's "Datasets"
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    assert inputs["train"].name == "embedded-faces-4labels-32px-train" and len(inputs["train"].digest) >= 8
    assert len({d.digest for d in inputs.values()}) == 3

    mlflow.set_tracking_uri(uri)
    features, images = example_inputs(trainer)
    with torch.no_grad():
        expected_seg = best(trainer, "segmentor")(images)
        expected_ann = best(trainer, "annotator")(features)  # the annotator's own list input: packing is exact
    for name, x, expected in (("segmentor", images, expected_seg),
                              ("annotator", PackedAnnotator.pack(features), expected_ann)):
        info = mlflow.models.get_model_info(models[name].model_uri)
        shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
        assert list(shape[1:]) == list(x.shape[1:]), (name, shape)
        assert info.saved_input_example_info is not None, name
        loaded = mlflow.pytorch.load_model(models[name].model_uri)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        # as a served model: numpy in, numpy out
        served = mlflow.pyfunc.load_model(models[name].model_uri).predict(x.numpy())
        np.testing.assert_allclose(served, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_a_method_without_annotator_logs_its_segmentor_only(tiny_config):
    cfg = tiny_config(**{"tracking.enabled": True, "tracking.experiment": "models", "train.method": "supervised",
                         "train.steps": 3})
    trainer = build_trainer(cfg)
    callback = MLflowCallback(cfg)
    trainer.fit([callback])
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(callback.run_id)
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.name for m in models] == ["segmentor"]
