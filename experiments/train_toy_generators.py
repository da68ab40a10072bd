"""Re-train the embedded world's toy generators shipped in lagm_ray/assets (about 50 min each on one
CPU core; run both categories at once on a 2-core machine).

    python experiments/train_toy_generators.py --category faces
"""

import argparse

from lagm_ray.cli import train_toy_generator
from lagm_ray.generator_training import GeneratorTrainConfig

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", default="faces")
    ap.add_argument("--steps", type=int, default=GeneratorTrainConfig.steps)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    c = GeneratorTrainConfig(category=args.category, steps=args.steps, num_threads=args.threads)
    print(train_toy_generator(c, track=False))
