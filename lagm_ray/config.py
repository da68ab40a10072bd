"""One typed configuration for every way into lagm_ray.

The CLI, experiments/ and search_spaces/ all build a :class:`Config` the same way: a YAML file
(optional) plus ``section.key=value`` overrides. Every key is typed and checked here, so a bad
value fails before any work starts, with the key (and the file) named in the message.

The defaults are the paper's / reference code's (SGD lr 1e-3 momentum 0.9 for both networks,
K = 1, batch 2, Head matched, 150k steps). Quickstart and test configs override them explicitly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import ConfigError


@dataclass
class RunConfig:
    name: str = "lagm"
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    output_dir: str = "runs"
    num_threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default


@dataclass
class DataConfig:
    dataset: str = "embedded"  # "embedded" (procedural world) or a real dataset name
    category: str = "faces"
    root: str | None = None  # dataset root for real datasets
    num_labelled: int = 10
    resolution: int = 64  # generator / annotator output resolution
    seg_resolution: int | None = None  # segmentor input resolution (Table C.9); None = resolution
    num_val: int = 100
    num_test: int = 200
    # Folder of unlabelled real images (jpg/png/webp, flat or nested), e.g. LSUN horse/airplane exported
    # for Pascal-Horse / Pascal-Aeroplane; None = the dataset has no unlabelled set here.
    unlabelled_root: str | None = None
    # DatasetGAN sets (Car-20, Cat-16, Face-34): the test images are split into cv_folds folds; fold
    # cv_fold is the validation set and the other folds the test set (sweep cv_fold for Table 1).
    cv_folds: int = 5
    cv_fold: int = 0


@dataclass
class GeneratorConfig:
    # "embedded:<category>" loads the toy StyleGAN2 shipped in lagm_ray/assets; otherwise a path.
    checkpoint: str = "embedded:faces"
    truncation_psi: float = 1.0  # the embedded world's true masks are exact only at psi = 1
    truncation_cutoff: int | None = None
    noise_mode: Literal["const", "random", "none"] = "const"


@dataclass
class AnnotatorConfig:
    width: int = 128  # FPN channels (reference: 128)
    # Resolutions of the synthesis blocks that feed the FPN; empty = every block (reference).
    feature_resolutions: list[int] = field(default_factory=list)


@dataclass
class SegmentorConfig:
    kind: str = "deeplabv3_resnet101"
    width: int | None = None  # channel width multiplier base (64 = torchvision); None = default
    init: str = "scratch"  # "scratch" or a path to torchvision-format weights


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    # lagm and supervised are the paper's; the rest are the methods it is compared with, each
    # configured in its own section below (lagm_ray/methods/ holds one module per method).
    method: Literal["lagm", "supervised", "pseudo_label", "inversion", "maml", "datasetgan", "repurposegan",
                    "ganorcon", "layermatch", "true_masks"] = "lagm"
    steps: int = 150_000
    # Algorithm 1's K: the segmentor is updated once every K annotator steps.
    # The reference code accepts K but always behaves as K = 1; K > 1 is implemented here.
    K: int = 1
    # Segmentor steps each time it is updated. The paper's Figure 4 finds the annotator learns faster
    # the more often the segmentor moves; > 1 goes further than K = 1. 1 = Algorithm 1 (reference code).
    segmentor_steps: int = 1
    matched_blocks: list[str] = field(default_factory=lambda: ["Head"])
    labelled_batch_size: int = 2  # 0 = the whole labelled set every step
    synthetic_batch_size: int = 2
    # 0 = a fresh G(z) for every synthetic batch (Algorithm 1, reference code). N > 0 = batches drawn from
    # N samples generated once at the start (seeded): takes the generator out of the step on CPU budgets.
    synthetic_pool: int = 0
    annotator_optim: OptimConfig = field(default_factory=OptimConfig)
    segmentor_optim: OptimConfig = field(default_factory=OptimConfig)
    # Gradient matching details (reference code's behaviour by default, see README):
    node_reduction: Literal["mean", "sum"] = "mean"  # per tensor: mean (code) or sum (paper Eq. 12) over output nodes
    count_1d_tensors: bool = True  # 1-D tensors add 0 but count in the divisor (code)
    synthetic_target: Literal["soft", "hard"] = "soft"  # soft CE against the annotator's softmax (code)
    # Class weights (labelled-set pixel frequency)^-p in the cross-entropy on labelled images: the loss of
    # supervised-only, and for LAGM both sides of the gradient matching (the segmentor's own steps on
    # annotator labels stay plain). Small parts (eyes, brows) then weigh in the matched gradients as much
    # as their rarity hides them. 0 = plain CE (paper, reference code). Read by lagm and supervised.
    class_weight_power: float = 0.0
    eval_interval: int = 4000
    checkpoint_interval: int = 4000
    log_interval: int = 50
    picture_interval: int = 0  # 0 = pictures only at evaluation


@dataclass
class EvalConfig:
    absent_class: Literal["zero", "ignore"] = "zero"  # reference quirk: absent classes count as IoU 0
    num_annotator_samples: int = 64  # generated images scored against true masks (embedded world)
    # Downstream protocol of Table 1: a fresh segmentor trained on annotator-labelled images.
    downstream_images: int = 10_000
    downstream_epochs: int = 20
    downstream_batch_size: int = 8
    downstream_lr: float = 1e-3


# ---- baselines (train.method other than lagm / supervised); each section is read by its method only.


@dataclass
class PseudoLabelConfig:
    """LAGM Appendix C, Table C.6: (i) a teacher segmentor learns from the labelled images, (ii) the
    annotator learns from the teacher's labels of generated images, (iii) the segmentor learns from
    annotator-labelled generated images. The paper gives no stage lengths: train.steps is split in thirds."""

    teacher_fraction: float = 1 / 3  # share of train.steps for stage (i) (paper: not given)
    annotator_fraction: float = 1 / 3  # share for stage (ii); stage (iii) gets the rest (paper: not given)
    # BN statistics of the teacher when it labels generated images (paper: not given). "batch" normalises
    # with the generated batch's own statistics (the reference code runs S in train mode throughout), which
    # bridges the real -> generated shift: on the quickstart faces its labels score 9.7% FG-mIoU against the
    # true masks vs 4.0% with "running" (the real images' running statistics, i.e. eval mode).
    teacher_bn: Literal["batch", "running"] = "batch"


@dataclass
class InversionConfig:
    """LAGM Appendix C, Table C.5: project the labelled images into the generator (the StyleGAN2-ADA
    projector of Karras et al. 2020b), train the annotator on the projections' features with the real
    masks, then the segmentor on annotator-labelled generated images."""

    space: Literal["w", "w+"] = "w"  # projector.py optimises one w for every layer; "w+" one per layer
    projection_steps: int = 1000  # projector.py's num_steps; not counted in train.steps
    projection_lr: float = 0.1  # projector.py's initial_learning_rate (Adam, ramped up then cosine down)
    projection_noise: float = 0.05  # projector.py's initial_noise_factor: w jitter, x std of w, fades out
    w_avg_samples: int = 10_000  # projector.py: samples that estimate the mean and spread of w
    projection_batch_size: int = 16  # images projected together (independent latents; bounds memory)
    annotator_fraction: float = 0.5  # share of train.steps for the annotator, the rest the segmentor (paper: not given)


@dataclass
class MAMLConfig:
    """LAGM Appendix C, Algorithm 2 and Table C.7: the annotator learns through K unrolled SGD steps of
    the segmentor on its labels, scored by the labelled loss; the segmentor then steps as in LAGM."""

    # Algorithm 2's K (inner-loop steps). Not train.K, which keeps Algorithm 1's meaning (segmentor
    # updated every train.K annotator steps; Algorithm 2 is train.K = 1). Table C.7 runs 1 and 2.
    unroll_steps: int = 1
    inner_lr: float = 0.1  # Algorithm 2's eta_i; "we use eta_i = 0.1 in MAML for all experiments"


@dataclass
class DatasetGANConfig:
    """DatasetGAN (Zhang et al., CVPR 2021), Section 3. The style interpreter reads the blocks that
    annotator.feature_resolutions names (every block when empty, as the paper) at the finest one's resolution."""
    num_classifiers: int = 10  # N, the ensemble size (Sec. 3.2: "N = 10 in our paper")
    hidden: list[int] = field(default_factory=lambda: [128, 32])  # release pixel_classifier, < 32 classes
    lr: float = 1.0e-3  # release: Adam, lr 0.001
    pixel_batch_size: int = 64  # pixels per member per step (release batch_size)
    # Pixels sampled per annotated image for each member's pool, every labelled region included
    # (Sec. 3.2); each member gets its own sample ("to amortize the effect of random sampling").
    pixels_per_image: int = 2048
    # Steps 1..labeller_steps of train.steps train the ensemble, the rest the segmentor. The release
    # trains each member for a few epochs of every annotated pixel with early stopping; 10k batches of
    # 64 is ~30 passes over a 10-image pool of 2048 pixels each.
    labeller_steps: int = 10_000
    set_size: int = 10_000  # generated images labelled by the ensemble (Sec. 3.3, Table 3)
    filter_ratio: float = 0.10  # the most uncertain (summed JS divergence) images dropped (Sec. 3.3, Table 4)
    chunk_pixels: int = 16_384  # pixels labelled at once: memory ~ chunk_pixels * feature channels
    generate_batch_size: int = 16  # generator batch while building the set


@dataclass
class RepurposeGANConfig:
    """RepurposeGAN (Tritrong et al., CVPR 2021), Section 3; sizes from Sec. 4."""
    model: Literal["cnn", "mlp"] = "cnn"  # the few-shot segmenter (Sec. 4.2); Table 2 and Fig. 5 use the CNN
    # Generator blocks by resolution (Table 7): coarse 4-8 px, middle 16-32 px, fine 64 px and up.
    # Sec. 4.1 uses every layer but the image's; here "fine" includes the last block (64 px on the toy world).
    layer_groups: list[Literal["coarse", "middle", "fine"]] = field(
        default_factory=lambda: ["coarse", "middle", "fine"])
    cnn_embed: int = 128  # 1x1 conv reducing the pixel features (Sec. 4.2: 5,056 -> 128)
    cnn_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64, 64, 64, 32])  # then the classes
    cnn_dilations: list[int] = field(default_factory=lambda: [2, 4, 8, 1, 2, 4, 8, 1])  # one per 3x3 conv
    mlp_hidden: list[int] = field(default_factory=lambda: [2000, 200])  # Sec. 4.2
    lr: float = 1.0e-3  # Adam (Sec. 4.2)
    weight_decay: float = 1.0e-3  # Sec. 4.2
    lr_decay_epochs: int = 50  # lr x 0.1 every 50 epochs over the annotated images (Sec. 4.2)
    fewshot_batch_size: int = 0  # annotated images per step; 0 = all (one step = one epoch)
    # Steps 1..labeller_steps of train.steps train the few-shot segmenter (Sec. 4.2: 1,000 epochs), the
    # rest the auto-shot segmenter.
    labeller_steps: int = 1_000
    set_size: int = 5_000  # generated images for the auto-shot segmenter (Sec. 4.1)
    target: Literal["soft", "hard"] = "soft"  # Sec. 3.3 keeps the few-shot logits, not the argmax
    # Geometric augmentation of the generated set, the same warp for image and target (Sec. 4.3).
    augment: bool = True
    flip_prob: float = 0.5  # random horizontal flips
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random scales
    rotate_degrees: float = 10.0  # random rotations in [-10, 10] degrees
    translate: float = 0.5  # random shifts up to 50% of the image size
    chunk_pixels: int = 16_384  # pixels embedded at once: memory ~ chunk_pixels * feature channels
    generate_batch_size: int = 16  # generator batch while building the set


@dataclass
class GANORCONConfig:
    """GANORCON (Saha et al., CVPR 2022), Section 3: MoCo v2 on unlabelled real images, hypercolumns,
    a projector trained on the few labelled images, optional distillation. The budget train.steps is
    split: steps 1..pretrain_steps MoCo, the next projector_steps the projector, the rest distillation
    (distill: true) or more projector training (distill: false)."""

    pretrain_steps: int = 100_000  # MoCo stage; the paper counts 800 epochs, here a share of the 150k default
    projector_steps: int = 25_000  # projector stage when distilling (the paper: 800 MLP / 200 CONV epochs)
    distill: bool = True  # Step III; Table 1's best entry is "CONV + distill"
    # f_CON: a ResNet trunk (paper: ResNet-50 at torchvision width 64)
    encoder_depth: Literal[18, 34, 50, 101] = 50
    encoder_width: int = 64
    # MoCo v2 (App. D): SGD lr 0.03, momentum 0.9, wd 1e-4, cosine; T = 0.2; batch 32 (Sec. 4);
    # queue 65536, key momentum 0.999 and a 2-layer MLP head to 128-d are MoCo v2's own defaults.
    moco_lr: float = 0.03
    moco_momentum: float = 0.9
    moco_weight_decay: float = 1.0e-4
    moco_batch_size: int = 32
    moco_temperature: float = 0.2
    moco_queue: int = 65_536
    moco_key_momentum: float = 0.999
    moco_dim: int = 128
    moco_crop_scale_min: float = 0.2  # MoCo v2's RandomResizedCrop(scale=(0.2, 1))
    # Step II: the projector on hypercolumns of conv2_x..conv5_x, upsampled bilinearly to the input size
    projector: Literal["mlp", "conv"] = "conv"  # CONV beats MLP in Table 2
    projector_lr: float | None = None  # Adam, cosine; None = the paper's 1e-3 (MLP) or 5e-4 (CONV)
    mlp_hidden: list[int] = field(default_factory=lambda: [1024, 256])  # App. B
    # CONV (App. B Model-A): encoder widths, one max-pool between levels; the decoder mirrors them.
    conv_channels: list[int] = field(default_factory=lambda: [1024, 256, 256, 256, 256, 512])
    conv_out: int = 256  # last ConvBNReLU before the per-pixel linear classifier (App. B)
    conv1_stride: int = 1  # the paper sets ResNet's first conv stride 2 -> 1 when extracting hypercolumns
    projector_augment: bool = True  # random resized crop, flip, colour jitter (Sec. 4)
    projector_crop_scale_min: float = 0.5  # not given in the paper; milder than MoCo's 0.2 for few labels
    # Step III (Sec. 4): batch 8, lr from train.segmentor_optim (paper: 1e-3) on unlabelled real images
    distill_batch_size: int = 8
    # Real datasets: how many unlabelled images load_unlabelled reads (the embedded world streams fresh renders)
    num_unlabelled: int = 10_000


@dataclass
class LayerMatchConfig:
    """LayerMatch (Galeev et al., "Learning high-resolution domain-specific representations with a GAN
    generator"), Sections 2-3. mode "decoder": Algorithm 1 (semantic projection decoder on annotated
    generated images, steps 1..decoder_steps) then Algorithm 2 (segmentor on generated images it labels).
    mode "pretrain": Algorithm 3 (LayerMatch pre-training of the segmentor's encoder, steps
    1..pretrain_steps) then fine-tuning the whole segmentor on the real labelled images."""

    mode: Literal["decoder", "pretrain"] = "pretrain"  # Sec. 3-4 is the paper's main proposal
    # decoder mode (Sec. 2.2): 32 feature maps, CBlock = dropout 0.5 + conv + BN; optimiser train.annotator_optim
    decoder_steps: int = 5_000  # not given in the paper; a share of the budget
    decoder_width: int = 32
    decoder_dropout: float = 0.5
    annotation_seed: int = 424_242  # the seeded "annotated generated images" (data.num_labelled of them)
    # pretrain mode (Sec. 3.1, 4): Adam lr 1e-4 with cosine decay; L = L_rec + L_match (Eq. 1)
    pretrain_steps: int = 100_000  # not given in the paper; a share of the 150k default
    pretrain_lr: float = 1.0e-4
    pretrain_batch_size: int = 8  # not given in the paper
    match_resolutions: list[int] = field(default_factory=list)  # generator blocks to predict; empty = all
    rec_weight: float = 1.0  # Eq. 1 adds L_rec and L_match with weight 1
    # "sum" = Eqs. 2 and 4 as written (squared L2 norms, batch mean); "mean" = per-element mean (MSE)
    reduction: Literal["sum", "mean"] = "sum"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "lagm"
    parent_run_id: str | None = None  # set by sweeps to nest a trial's run


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    datasetgan: DatasetGANConfig = field(default_factory=DatasetGANConfig)
    repurposegan: RepurposeGANConfig = field(default_factory=RepurposeGANConfig)
    ganorcon: GANORCONConfig = field(default_factory=GANORCONConfig)
    layermatch: LayerMatchConfig = field(default_factory=LayerMatchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"train.K": 1, ...}``: the form MLflow params and sweep spaces use."""
        return flatten(self.to_dict())

    def replace(self, overrides: dict[str, Any] | None = None, source: str = "overrides") -> "Config":
        """A validated copy with dotted keys set, e.g. ``{"train.K": 5}``."""
        data = self.to_dict()
        for key, value in (overrides or {}).items():
            _set_dotted(data, key, value, source)
        return from_dict(data, source)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """YAML file (optional) plus overrides (``["train.K=5"]`` or ``{"train.K": 5}``) -> Config."""
    data: dict[str, Any] = Config().to_dict()
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        for key, value in flatten(loaded).items():
            _set_dotted(data, key, value, source)
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_dotted(data, key, value, f"{source} + overrides" if path else "overrides")
    return from_dict(data, source)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.K=5"`` -> ("train.K", 5). The value is read as YAML, so lists and nulls work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.K=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.strip(), value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"{source}: unknown config key {key!r} (no section {'.'.join(parts[: i + 1])!r}); "
                              f"valid sections: {', '.join(Config().to_dict())}")
        node = node[part]
    if parts[-1] not in node:
        section = ".".join(parts[:-1]) or "<top>"
        raise ConfigError(f"{source}: unknown config key {key!r}; keys in {section}: {', '.join(node)}")
    if isinstance(node[parts[-1]], dict) and isinstance(value, dict):
        for k, v in value.items():
            _set_dotted(data, f"{key}.{k}", v, source)
    else:
        node[parts[-1]] = value


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    cfg = _build(Config, data, "", source)
    validate(cfg, source)
    return cfg


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], key, source)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{source}: unknown config key {prefix + sorted(unknown)[0]!r}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{source}: {key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{source}: {key} must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, str):  # "Res5,Head" from a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "1e-3" as a string
                except ValueError:
                    pass
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def validate(cfg: Config, source: str = "config") -> None:
    """Range checks that types alone cannot express. Block names are checked against the model
    when the trainer builds it (they depend on the segmentor kind)."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {key} {msg}")

    t = cfg.train
    need(t.K >= 1, "train.K", f"must be >= 1 (segmentor updated every K steps), got {t.K}")
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    need(len(t.matched_blocks) > 0, "train.matched_blocks", "must name at least one block")
    from .models.segmentors import (
        blocks_of_kind,  # imports torch: only when a config is validated
    )

    try:
        valid_blocks = blocks_of_kind(cfg.segmentor.kind)
    except ValueError as e:
        raise ConfigError(f"{source}: segmentor.kind: {e}") from None
    bad = [b for b in t.matched_blocks if b not in valid_blocks]
    need(not bad, "train.matched_blocks", f"unknown block {bad[0]!r} for {cfg.segmentor.kind}; valid blocks: "
         f"{', '.join(valid_blocks)}" if bad else "")
    need(t.labelled_batch_size >= 0, "train.labelled_batch_size", "must be >= 0 (0 = whole labelled set)")
    need(t.synthetic_batch_size >= 1, "train.synthetic_batch_size", "must be >= 1")
    need(t.class_weight_power >= 0, "train.class_weight_power", f"must be >= 0, got {t.class_weight_power}")
    need(t.segmentor_steps >= 1, "train.segmentor_steps", f"must be >= 1, got {t.segmentor_steps}")
    need(t.synthetic_pool == 0 or t.synthetic_pool >= t.synthetic_batch_size, "train.synthetic_pool",
         f"must be 0 (fresh samples) or at least train.synthetic_batch_size ({t.synthetic_batch_size}), "
         f"got {t.synthetic_pool}")
    for name in ("annotator_optim", "segmentor_optim"):
        o = getattr(t, name)
        need(o.lr > 0, f"train.{name}.lr", f"must be > 0, got {o.lr}")
        need(0 <= o.momentum < 1, f"train.{name}.momentum", f"must be in [0, 1), got {o.momentum}")
        need(o.weight_decay >= 0, f"train.{name}.weight_decay", "must be >= 0")
    for name in ("eval_interval", "checkpoint_interval", "log_interval"):
        need(getattr(t, name) >= 1, f"train.{name}", "must be >= 1")
    need(t.picture_interval >= 0, "train.picture_interval", "must be >= 0")

    d = cfg.data
    for name in ("resolution", "seg_resolution"):
        r = getattr(d, name)
        if r is not None:
            need(16 <= r <= 1024 and r & (r - 1) == 0, f"data.{name}", f"must be a power of two in 16..1024, got {r}")
    if d.seg_resolution is not None:
        need(d.seg_resolution <= d.resolution, "data.seg_resolution", "must not exceed data.resolution")
    need(d.num_labelled >= 1, "data.num_labelled", f"must be >= 1, got {d.num_labelled}")
    need(d.num_val >= 1 and d.num_test >= 1, "data.num_val/num_test", "must be >= 1")

    need(cfg.annotator.width >= 1, "annotator.width", "must be >= 1")
    need(cfg.generator.truncation_psi >= 0, "generator.truncation_psi", "must be >= 0")
    need(cfg.run.num_threads >= 0, "run.num_threads", "must be >= 0")
    dev = cfg.run.device
    need(dev in ("auto", "cpu") or dev == "cuda" or dev.startswith("cuda:") or dev == "mps", "run.device",
         f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
    e = cfg.eval
    need(e.downstream_images >= 1 and e.downstream_epochs >= 1 and e.downstream_batch_size >= 1,
         "eval.downstream_*", "must be >= 1")
    need(e.downstream_lr > 0, "eval.downstream_lr", "must be > 0")

    # datasetgan
    g = cfg.datasetgan
    need(g.num_classifiers >= 1, "datasetgan.num_classifiers", f"must be >= 1, got {g.num_classifiers}")
    need(len(g.hidden) >= 1 and min(g.hidden) >= 1, "datasetgan.hidden", f"must be positive widths, got {g.hidden}")
    need(g.lr > 0, "datasetgan.lr", f"must be > 0, got {g.lr}")
    need(g.pixel_batch_size >= 2, "datasetgan.pixel_batch_size", "must be >= 2 (BatchNorm)")
    need(g.pixels_per_image >= 1, "datasetgan.pixels_per_image", "must be >= 1")
    need(0 <= g.filter_ratio < 1, "datasetgan.filter_ratio", f"must be in [0, 1), got {g.filter_ratio}")
    for name in ("set_size", "chunk_pixels", "generate_batch_size", "labeller_steps"):
        need(getattr(g, name) >= 1, f"datasetgan.{name}", "must be >= 1")
    if t.method == "datasetgan":
        need(g.labeller_steps < t.steps, "datasetgan.labeller_steps",
             f"must be below train.steps ({t.steps}): the steps after it train the segmentor")
        need(int(g.set_size * (1 - g.filter_ratio)) >= 1, "datasetgan.set_size", "keeps no image after filtering")

    # repurposegan
    r = cfg.repurposegan
    need(len(r.layer_groups) >= 1 and len(set(r.layer_groups)) == len(r.layer_groups), "repurposegan.layer_groups",
         f"must name distinct groups among coarse, middle, fine; got {r.layer_groups}")
    need(len(r.cnn_dilations) == len(r.cnn_channels) + 1, "repurposegan.cnn_dilations",
         f"needs one dilation per conv: len(cnn_channels) + 1 = {len(r.cnn_channels) + 1}, got {len(r.cnn_dilations)}")
    for name in ("cnn_channels", "cnn_dilations", "mlp_hidden"):
        need(len(getattr(r, name)) >= 1 and min(getattr(r, name)) >= 1, f"repurposegan.{name}", "must be >= 1")
    need(r.cnn_embed >= 1, "repurposegan.cnn_embed", "must be >= 1")
    need(r.lr > 0 and r.weight_decay >= 0, "repurposegan.lr/weight_decay", "lr must be > 0, weight_decay >= 0")
    need(r.fewshot_batch_size >= 0, "repurposegan.fewshot_batch_size", "must be >= 0 (0 = all annotated images)")
    for name in ("set_size", "chunk_pixels", "generate_batch_size", "labeller_steps", "lr_decay_epochs"):
        need(getattr(r, name) >= 1, f"repurposegan.{name}", "must be >= 1")
    need(0 <= r.flip_prob <= 1, "repurposegan.flip_prob", f"must be in [0, 1], got {r.flip_prob}")
    need(len(r.scale_range) == 2 and 0 < r.scale_range[0] <= r.scale_range[1], "repurposegan.scale_range",
         f"must be [low, high] with 0 < low <= high, got {r.scale_range}")
    need(0 <= r.rotate_degrees <= 180 and 0 <= r.translate <= 1, "repurposegan.rotate_degrees/translate",
         "must be in [0, 180] degrees and [0, 1] of the image size")
    if t.method == "repurposegan":
        need(r.labeller_steps < t.steps, "repurposegan.labeller_steps",
             f"must be below train.steps ({t.steps}): the steps after it train the auto-shot segmentor")
    # ganorcon
    g = cfg.ganorcon
    need(g.pretrain_steps >= 0 and g.projector_steps >= 0, "ganorcon.pretrain_steps/projector_steps", "must be >= 0")
    if t.method == "ganorcon":
        need(g.pretrain_steps + (g.projector_steps if g.distill else 0) < t.steps, "ganorcon.pretrain_steps",
             f"+ (projector_steps when distilling) must leave steps for the last stage of train.steps={t.steps}")
    need(g.encoder_width >= 1 and g.moco_dim >= 1, "ganorcon.encoder_width/moco_dim", "must be >= 1")
    need(g.moco_lr > 0 and g.moco_weight_decay >= 0 and 0 <= g.moco_momentum < 1, "ganorcon.moco_lr",
         "must be > 0 (weight decay >= 0, momentum in [0, 1))")
    need(g.moco_batch_size >= 2, "ganorcon.moco_batch_size", "must be >= 2 (BatchNorm)")
    need(g.moco_queue >= g.moco_batch_size, "ganorcon.moco_queue", "must hold at least one batch of keys")
    need(g.moco_temperature > 0, "ganorcon.moco_temperature", "must be > 0")
    need(0 <= g.moco_key_momentum < 1, "ganorcon.moco_key_momentum", "must be in [0, 1)")
    for key in ("moco_crop_scale_min", "projector_crop_scale_min"):
        need(0 < getattr(g, key) <= 1, f"ganorcon.{key}", "must be in (0, 1]")
    need(g.projector_lr is None or g.projector_lr > 0, "ganorcon.projector_lr", "must be > 0 (or null)")
    need(len(g.mlp_hidden) >= 1 and min(g.mlp_hidden) >= 1, "ganorcon.mlp_hidden", "must list widths >= 1")
    need(len(g.conv_channels) >= 1 and min(g.conv_channels) >= 1 and g.conv_out >= 1, "ganorcon.conv_channels",
         "must list widths >= 1 (and conv_out >= 1)")
    need(g.conv1_stride in (1, 2), "ganorcon.conv1_stride", "must be 1 (paper) or 2 (ResNet's own)")
    need(g.distill_batch_size >= 2, "ganorcon.distill_batch_size", "must be >= 2 (BatchNorm)")
    need(g.num_unlabelled >= 1, "ganorcon.num_unlabelled", "must be >= 1")

    # layermatch
    lm = cfg.layermatch
    need(lm.decoder_steps >= 0 and lm.pretrain_steps >= 0, "layermatch.decoder_steps/pretrain_steps", "must be >= 0")
    if t.method == "layermatch":
        stage = "decoder_steps" if lm.mode == "decoder" else "pretrain_steps"
        need(getattr(lm, stage) < t.steps, f"layermatch.{stage}",
             f"must leave steps for the second stage of train.steps={t.steps}")
    need(lm.decoder_width >= 1, "layermatch.decoder_width", "must be >= 1")
    need(0 <= lm.decoder_dropout < 1, "layermatch.decoder_dropout", "must be in [0, 1)")
    need(lm.pretrain_lr > 0, "layermatch.pretrain_lr", "must be > 0")
    need(lm.pretrain_batch_size >= 2, "layermatch.pretrain_batch_size", "must be >= 2 (BatchNorm)")
    need(lm.rec_weight >= 0, "layermatch.rec_weight", "must be >= 0")
    # pseudo_label, inversion: stage shares of train.steps; every stage must get at least one step
    from .methods.lagm_baselines import stage_steps

    def stages(section: str, fractions: dict[str, float]) -> None:
        for key, f in fractions.items():
            need(0 < f < 1, f"{section}.{key}", f"must be in (0, 1), got {f}")
        need(sum(fractions.values()) < 1, f"{section}.*_fraction", "must sum to less than 1 (the segmentor's "
             f"stage gets the rest), got {sum(fractions.values()):g}")
        if t.method == section:
            counts = stage_steps(t.steps, list(fractions.values()))
            need(min(counts) >= 1, f"{section}.*_fraction", f"leave a stage of train.steps={t.steps} without "
                 f"steps (stages: {counts}); raise train.steps or change the fractions")

    # pseudo_label
    p = cfg.pseudo_label
    stages("pseudo_label", {"teacher_fraction": p.teacher_fraction, "annotator_fraction": p.annotator_fraction})
    # inversion
    inv = cfg.inversion
    stages("inversion", {"annotator_fraction": inv.annotator_fraction})
    need(inv.projection_steps >= 1, "inversion.projection_steps", f"must be >= 1, got {inv.projection_steps}")
    need(inv.projection_lr > 0, "inversion.projection_lr", f"must be > 0, got {inv.projection_lr}")
    need(inv.projection_noise >= 0, "inversion.projection_noise", f"must be >= 0, got {inv.projection_noise}")
    need(inv.w_avg_samples >= 2, "inversion.w_avg_samples", f"must be >= 2, got {inv.w_avg_samples}")
    need(inv.projection_batch_size >= 1, "inversion.projection_batch_size", "must be >= 1")
    # maml
    m = cfg.maml
    need(m.unroll_steps >= 1, "maml.unroll_steps", f"must be >= 1, got {m.unroll_steps}")
    need(m.inner_lr > 0, "maml.inner_lr", f"must be > 0, got {m.inner_lr}")


def resolve_device(name: str):
    """The ``run.device`` key: "auto" picks CUDA when present (cluster GPUs), else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
