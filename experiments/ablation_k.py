"""Ablation of K, Algorithm 1's segmentor-update interval (the paper's Figure 4): K in 1, 2, 5, 10, 20.

    python experiments/ablation_k.py --quick                 # minutes on 2 CPUs, starts a local Ray
    ray job submit --working-dir . -- python experiments/ablation_k.py --quick   # on a running cluster
    python experiments/ablation_k.py --steps 3000            # a longer budget

Runs search_spaces/ablation_k.yaml as a Ray Tune grid; every trial is an MLflow child run of the
sweep's parent run; a killed driver is restored by running the same command again with --resume.
"""

import sys

import _path  # noqa: F401
from rich.table import Table

from lagm_ray import paper
from lagm_ray.sweep_command import SEARCH_SPACES, main


def compare(df):
    t = Table(title="K: ours (embedded faces) beside the paper")
    for c in ("K", "ours test FG-mIoU %", "ours annotator mIoU vs truth %", "ours s/step"):
        t.add_column(c, justify="right")
    g = df.groupby("train.K")
    for k, rows in g:
        t.add_row(str(k), f"{100 * rows['test FG-mIoU'].mean():.1f}" if "test FG-mIoU" in rows else "",
                  f"{100 * rows['annotator mIoU vs truth'].mean():.1f}" if "annotator mIoU vs truth" in rows else "",
                  f"{rows['s/step'].mean():.3f}" if "s/step" in rows else "")
    t.caption = "paper: " + paper.K_ABLATION
    return t


if __name__ == "__main__":
    sys.exit(main(SEARCH_SPACES / "ablation_k.yaml", __doc__, compare=compare, paper_note=paper.K_ABLATION))
