import dataclasses
import types
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AfterValidator
from pydantic.fields import FieldInfo

from lagm_ray.config import SHARED_SECTIONS, parse_override
from lagm_ray.errors import ConfigError
from lagm_ray.methods import METHODS, Config, from_dict, load_config


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


# ---------------------------------------------------------------------------------------------
# Every constrained key of every section (shared and each method's): the bad values come from the schema
# itself (its bounds and literals), so a key added with a bound is tested without touching this file.


def _leaves(cls=Config, prefix=""):
    """(dotted key, pydantic FieldInfo) of every key of every section, nested sections (train.*_optim) included."""
    for name, info in cls.__pydantic_fields__.items():
        if hasattr(info.annotation, "__pydantic_fields__"):
            yield from _leaves(info.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, info


def _meta(annotation):
    """The constraint objects (Ge, Gt, Le, Lt, MinLen, AfterValidator) inside an Annotated type."""
    if get_origin(annotation) is not Annotated:
        return []
    return [m for a in annotation.__metadata__ for m in (a.metadata if isinstance(a, FieldInfo) else [a])]


def _outside(meta):
    """One value outside each bound."""
    out = {Ge: lambda m: m.ge - 1, Gt: lambda m: m.gt, Le: lambda m: m.le + 1, Lt: lambda m: m.lt,
           MinLen: lambda m: []}
    return [out[type(m)](m) for m in meta if type(m) in out]


# Keys whose rule is a function (AfterValidator) or a check across keys of their section (model validator).
CUSTOM_BAD = {
    "run.device": ["gpu"],
    "data.resolution": [48, 2048],
    "data.seg_resolution": [48, 128],  # not a power of two; finer than data.resolution (64)
    "train.synthetic_pool": [1],  # below train.synthetic_batch_size (2)
    "repurposegan.layer_groups": [["fine", "fine"]],
    "repurposegan.scale_range": [[2.0, 1.0], [0.0, 1.0], [1.0]],
    "repurposegan.cnn_dilations": [[1, 2]],  # one per conv: len(cnn_channels) + 1
    "ganorcon.moco_queue": [2],  # below moco_batch_size
    "pseudo_label.teacher_fraction": [0.7],  # + annotator_fraction (1/3) >= 1
}


def _bad_values(key, info):
    meta, ann = list(info.metadata), info.annotation
    values = _outside(meta)
    if get_origin(ann) is Literal:
        values.append("no-such-value")
    for arg in get_args(ann) if get_origin(ann) in (Union, types.UnionType) else []:  # X | None
        meta += _meta(arg)
        values += _outside(_meta(arg))
    if get_origin(ann) is list:
        (item,) = get_args(ann)
        values += [[v] for v in _outside(_meta(item))]
        if get_origin(item) is Literal:
            values.append(["no-such-value"])
    if any(isinstance(m, AfterValidator) for m in meta):
        assert key in CUSTOM_BAD, f"{key} has a validator function: give CUSTOM_BAD a value it rejects"
    return values + CUSTOM_BAD.get(key, [])


BAD = [(key, v) for key, info in _leaves() for v in _bad_values(key, info)]


def _nested(key, value):
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def test_the_battery_covers_every_constrained_key():
    keys = {k for k, _ in BAD}
    assert set(CUSTOM_BAD) <= keys
    # every method's section has constrained keys in the battery, as have the shared ones
    sections = {k.split(".")[0] for k in keys}
    assert sections >= {"run", "data", "generator", "annotator", "train", "eval"} | {
        c.section for c in METHODS.values() if c.section is not None}
    assert len(keys) >= 100


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_a_bad_value_names_the_file_and_the_key(tmp_path, key, value):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_nested(key, value)))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: {key}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: value})
    assert f"overrides: {key}" in str(e.value)


def _wrong_type(info):
    ann = info.annotation
    args = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) in (Union, types.UnionType) else [ann]
    tp = get_origin(args[0]) or args[0]
    return {bool: "maybe", int: "many", float: "much", list: 5, str: [1]}.get(tp)


TYPED = [(key, _wrong_type(info)) for key, info in _leaves() if _wrong_type(info) is not None]


@pytest.mark.parametrize("key, value", TYPED, ids=[k for k, _ in TYPED])
def test_a_wrong_type_names_the_key(tmp_path, key, value):
    p = tmp_path / "typo.yaml"
    p.write_text(yaml.safe_dump(_nested(key, value)))
    with pytest.raises(ConfigError, match="must be") as e:
        load_config(p)
    assert f"{p}: {key}" in str(e.value)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("section", SECTIONS)
def test_an_unknown_key_is_named_with_the_valid_keys_of_its_section(section):
    valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
    with pytest.raises(ConfigError) as e:  # from a file or overrides
        load_config(None, {f"{section}.nope": 1})
    assert f"'{section}.nope'" in str(e.value) and all(k in str(e.value) for k in valid)
    stored = Config().to_dict()
    stored[section]["nope"] = 1
    with pytest.raises(ConfigError) as e:  # from a stored config (checkpoint, manifest)
        from_dict(stored, "stored config")
    assert f"stored config: unknown config key '{section}.nope'; keys in {section}: {', '.join(valid)}" in str(e.value)


def test_an_unknown_section_lists_the_sections():
    with pytest.raises(ConfigError) as e:
        from_dict({"nope": {}}, "stored config")
    assert "unknown config key 'nope'" in str(e.value) and all(s in str(e.value) for s in SECTIONS)


def test_an_unknown_method_lists_the_registered_ones(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("train:\n  method: magic\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: train.method must be one of {', '.join(METHODS)}, got 'magic'" in str(e.value)


def test_the_registry_is_the_only_list_of_methods():
    method_sections = {c.section: c.Settings for c in METHODS.values() if c.section is not None}
    # the Config has the shared sections, then one per registered method section, and nothing else
    assert list(SECTIONS) == list(SHARED_SECTIONS) + list(method_sections)
    for section, settings in method_sections.items():
        assert SECTIONS[section] is settings
    # train.method accepts every registered name (with its defaults) and nothing else
    for name in METHODS:
        assert load_config(None, {"train.method": name}).train.method == name
    for name in ("LAGM", "pseudo-label", "DatasetGANTrainer", ""):
        with pytest.raises(ConfigError, match="train.method must be one of"):
            load_config(None, {"train.method": name})


def test_problems_are_reported_together_one_line_each():
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"K": 0, "steps": "many"}, "datasetgan": {"lr": 0}}, "x.yaml")
    assert str(e.value).splitlines() == [
        "x.yaml: train.steps must be an integer, got 'many'",
        "x.yaml: train.K must be >= 1 (segmentor updated every K steps), got 0",
        "x.yaml: datasetgan.lr must be > 0, got 0",
    ]


def test_stored_configs_keep_their_shape():
    """Checkpoints and manifests store to_dict(): the method sections stay top-level keys named as before."""
    d = Config().to_dict()
    assert list(d) == ["run", "data", "generator", "annotator", "segmentor", "train", "eval", "tracking",
                       "pseudo_label", "inversion", "maml", "datasetgan", "repurposegan", "ganorcon", "layermatch"]
    assert from_dict(d, "stored") == Config()
    assert Config().to_yaml().startswith("run:\n  name: lagm\n")


# The checks across sections of the method train.method selects (Trainer.check and its subclasses').
SELECTED = [
    ("lagm", {"train.matched_blocks": ["Res9"]}, "train.matched_blocks unknown block 'Res9'"),
    ("supervised", {"segmentor.kind": "vgg"}, "segmentor.kind: unknown segmentor kind 'vgg'"),
    ("pseudo_label", {"train.steps": 2}, "pseudo_label.teacher_fraction/annotator_fraction leave a stage"),
    ("inversion", {"train.steps": 1}, "inversion.annotator_fraction leave a stage"),
    ("datasetgan", {"train.steps": 10, "datasetgan.labeller_steps": 10}, "datasetgan.labeller_steps must be below"),
    ("datasetgan", {"datasetgan.set_size": 1, "datasetgan.filter_ratio": 0.5}, "datasetgan.set_size keeps no image"),
    ("repurposegan", {"train.steps": 10, "repurposegan.labeller_steps": 10}, "repurposegan.labeller_steps must be"),
    ("ganorcon", {"train.steps": 10, "ganorcon.pretrain_steps": 5, "ganorcon.projector_steps": 5},
     "ganorcon.pretrain_steps + (projector_steps when distilling) must leave steps"),
    ("layermatch", {"train.steps": 10, "layermatch.pretrain_steps": 10}, "layermatch.pretrain_steps must leave"),
    ("layermatch", {"train.steps": 10, "layermatch.mode": "decoder", "layermatch.decoder_steps": 10},
     "layermatch.decoder_steps must leave"),
]


@pytest.mark.parametrize("method, overrides, needle", SELECTED, ids=[f"{m}:{n[:30]}" for m, _, n in SELECTED])
def test_the_selected_methods_checks_name_the_key(tmp_path, method, overrides, needle):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"train": {"method": method}}))
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides)
    assert f"{p}: {needle}" in str(e.value)
    if not any(k.startswith(("train.matched", "segmentor.")) for k in overrides):  # other methods do not care
        other = "maml" if method != "maml" else "lagm"
        load_config(p, {**overrides, "train.method": other})
