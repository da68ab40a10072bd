"""Generate a labelled synthetic dataset from a learned annotator as parquet shards, on Ray (as `lagm generate`).

    python experiments/generate_dataset.py --annotator runs/quickstart-lagm-10 --num-images 10000 --out data/faces10k
    ray job submit --working-dir . -- python experiments/generate_dataset.py --annotator ... --out /shared/faces10k

Each Ray actor holds the generator and the annotator once and writes whole shards (atomically); the
driver only sees one summary row per shard. Running the same command again after an interruption writes
only the missing shards. Read the result with pandas (`pd.read_parquet(OUT)`), pyarrow, Ray Data, or train
a downstream segmentor on it with `lagm downstream OUT`.
"""

import argparse
import sys
from pathlib import Path

import _path  # noqa: F401

from lagm_ray.datagen import DatasetError, GenerationSpec
from lagm_ray.runs import generate_and_log

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotator", required=True, type=Path, help="a LAGM run directory (its best.pt) or checkpoint")
    ap.add_argument("--num-images", required=True, type=int, help="images to generate, before any filtering")
    ap.add_argument("--out", required=True, type=Path, help="output directory (shared storage on a cluster)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16, help="generator batch (part of the dataset's identity)")
    ap.add_argument("--concurrency", type=int, help="actors (default: one per GPU, else one per CPU)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                    help="a GPU per actor (default: when the cluster has GPUs)")
    ap.add_argument("--seed", type=int, default=0, help="image i has seed SEED + i")
    ap.add_argument("--truncation", type=float, help="truncation psi (default: the annotator run's)")
    ap.add_argument("--min-confidence", type=float, help="drop images whose confidence is below")
    ap.add_argument("--max-entropy", type=float, help="drop images whose mean entropy is above")
    ap.add_argument("--local", action="store_true", help="generate in this process, without Ray")
    ap.add_argument("--track", action=argparse.BooleanOptionalAction, default=True, help="log the run to MLflow")
    ap.add_argument("--experiment", default="lagm-datasets")
    a = ap.parse_args()
    try:
        spec = GenerationSpec(num_images=a.num_images, shard_size=a.shard_size, seed=a.seed, batch_size=a.batch_size,
                              truncation_psi=a.truncation, min_confidence=a.min_confidence, max_entropy=a.max_entropy)
        generate_and_log(a.annotator, a.out, spec, local=a.local, concurrency=a.concurrency,
                         cpus_per_actor=a.cpus_per_actor, use_gpu=a.gpu, track=a.track, experiment=a.experiment)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
