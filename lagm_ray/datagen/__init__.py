"""Labelled synthetic datasets from a learned annotator, as parquet shards (`lagm generate`), for training
downstream segmentors on large generated sets (:mod:`lagm_ray.downstream`, Table 1's protocol).

Torch and pyarrow only: no Ray (:mod:`lagm_ray.distributed.generate`), no MLflow (:mod:`lagm_ray.tracking`),
and no trainer or method: the annotator of a trained run is rebuilt by :mod:`lagm_ray.annotator_runs` and
handed to the :class:`Labeller`.

    spec.py      what determines the rows (a dataset's identity): GenerationSpec, AnnotatorInfo
    label.py     the labeller: seeds -> generated images, annotator labels, confidence and entropy
    shards.py    rows as parquet: PNG encoding, the schema, one shard generated, written and checked
    manifest.py  the directory: manifest (hidden, so every parquet reader sees only shards), lock, and the
                 plan of a (resumed) run
    reader.py    reading back: the directory verified, rows as tensors, a picture of a few
"""

from .label import (
    Labeller,
    Samples,
    check_same_file,
    generate_samples,
    labelling_source,
)
from .manifest import LEGACY_MANIFEST, MANIFEST, Plan, manifest_path, plan
from .reader import (
    ShardDataset,
    check_classes,
    check_labels,
    load_tensors,
    open_dataset,
    sample_grid,
    training_pair,
)
from .shards import (
    META_KEY,
    decode_images,
    decode_masks,
    decode_png,
    produce_shard,
    read_shard,
)
from .spec import (
    AnnotatorInfo,
    DatasetError,
    GenerationSpec,
    SettingsMismatch,
    check_workers,
)

__all__ = [
    "LEGACY_MANIFEST", "MANIFEST", "META_KEY", "AnnotatorInfo", "DatasetError", "GenerationSpec", "Labeller", "Plan", "Samples",
    "SettingsMismatch", "ShardDataset", "check_classes", "check_labels", "check_same_file", "check_workers",
    "decode_images", "decode_masks", "decode_png", "generate_samples", "labelling_source", "load_tensors",
    "manifest_path", "open_dataset", "plan", "produce_shard", "read_shard", "sample_grid", "training_pair",
]
