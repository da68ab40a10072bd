"""Re-train the embedded world's toy generators shipped in lagm_ray/assets (about 50 min each on one
CPU core; run both categories at once on a 2-core machine).

    python experiments/train_toy_generators.py --category faces
"""

import argparse

from lagm_ray.generator_training import GeneratorTrainConfig, train_generator
from lagm_ray.progress import make_progress
from lagm_ray.synthetic import embedded_generator_path

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", default="faces")
    ap.add_argument("--steps", type=int, default=GeneratorTrainConfig.steps)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    c = GeneratorTrainConfig(category=args.category, steps=args.steps, num_threads=args.threads)
    with make_progress() as progress:
        task = progress.add_task(f"generator {c.category}", total=c.steps, info="")
        metrics = train_generator(c, embedded_generator_path(c.category),
                                  on_step=lambda s, m: progress.update(task, completed=s, info=f"L1 {m['loss/distill']:.4f}"))
    print(metrics)
