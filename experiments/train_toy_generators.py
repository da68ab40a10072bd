"""Re-train the embedded world's toy generators shipped in lagm_ray/assets (about 16 min each on 2
CPU cores at the recipe's 4000 steps; the same as `lagm train-generator --category faces`).

    python experiments/train_toy_generators.py --category faces
"""

import argparse

from lagm_ray.cli import train_toy_generator
from lagm_ray.generator_training import GeneratorTrainConfig

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", default="faces")
    ap.add_argument("--steps", type=int, default=GeneratorTrainConfig.steps)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, every core)")
    args = ap.parse_args()
    c = GeneratorTrainConfig(category=args.category, steps=args.steps, num_threads=args.threads)
    print(train_toy_generator(c, track=False))
