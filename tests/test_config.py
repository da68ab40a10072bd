import pytest

from lagm_ray.config import parse_override
from lagm_ray.errors import ConfigError
from lagm_ray.methods import Config, load_config


def test_defaults_are_the_papers():
    cfg = load_config()
    t = cfg.train
    assert (t.K, t.labelled_batch_size, t.synthetic_batch_size, t.matched_blocks) == (1, 2, 2, ["Head"])
    assert (t.annotator_optim.name, t.annotator_optim.lr, t.annotator_optim.momentum) == ("sgd", 1e-3, 0.9)
    assert t.steps == 150_000


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  K: 5\n  annotator_optim: {name: adam, lr: 1e-4}\ndata:\n  num_labelled: 2\n")
    cfg = load_config(p, ["train.matched_blocks=Res5,Head", "data.seg_resolution=32", "run.seed=3"])
    assert cfg.train.K == 5 and cfg.train.annotator_optim.name == "adam"
    assert cfg.train.annotator_optim.lr == pytest.approx(1e-4)  # YAML's "1e-4" string becomes a float
    assert cfg.train.matched_blocks == ["Res5", "Head"]
    assert cfg.data.seg_resolution == 32 and cfg.data.num_labelled == 2 and cfg.run.seed == 3
    # round trip through the flat form that MLflow and sweeps use
    assert Config().replace(cfg.flat()) == cfg


@pytest.mark.parametrize("text, needle", [
    ("train:\n  K: 0\n", "train.K"),
    ("train:\n  KK: 1\n", "'train.KK'"),
    ("trian:\n  K: 1\n", "'trian.K'"),
    ("train:\n  annotator_optim: {lr: -1}\n", "train.annotator_optim.lr"),
    ("train:\n  segmentor_optim: {lr: 0}\n", "train.segmentor_optim.lr"),
    ("train:\n  K: two\n", "train.K must be an integer"),
    ("data:\n  resolution: 48\n", "data.resolution"),
    ("train: [1, 2\n", "invalid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train:\n  method: magic\n", "train.method must be one of"),
    ("data:\n  seg_resolution: sixty\n", "data.seg_resolution must be an integer"),  # an optional field
])
def test_bad_yaml_names_file_and_key(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.K")
    with pytest.raises(ConfigError, match="train.K"):
        load_config(None, ["train.K=-3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(None, ["nope=1"])


def test_missing_file():
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config("does-not-exist.yaml")
