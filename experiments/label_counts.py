"""LAGM with 2, 10, 30, 150 and 1500 labelled images (the paper's Figure 2 on CelebAMask-HQ).

    python experiments/label_counts.py --quick                        # the embedded faces
    python experiments/label_counts.py --root /data/CelebAMask-HQ --generator /weights/celeba_g.pkl
    ray job submit --working-dir . -- python experiments/label_counts.py --quick
"""

import sys

import _path  # noqa: F401
from rich.table import Table

from lagm_ray import paper
from lagm_ray.experiment import SEARCH_SPACES, main


def flags(ap):
    ap.add_argument("--root", help="CelebAMask-HQ root: run on it instead of the embedded faces")
    ap.add_argument("--generator", help="generator checkpoint for --root (NVlabs pickle or lagm_ray .pt)")


def adjust(spec, args):
    if args.root:
        spec.base = spec.base.replace({"data.dataset": "celebamask_hq", "data.root": args.root,
                                       **({"generator.checkpoint": args.generator} if args.generator else {})})
        spec.name = spec.name.replace("label_counts", "label_counts_celebamask")
    return spec


def compare(df):
    t = Table(title="labelled images: ours beside the paper (CelebA FG-mIoU %)")
    for c in ("labels", "paper", "ours test FG-mIoU %"):
        t.add_column(c, justify="right")
    for n, rows in df.groupby("data.num_labelled"):
        ours = f"{100 * rows['test FG-mIoU'].mean():.1f}" if "test FG-mIoU" in rows else ""
        t.add_row(str(n), paper.LABEL_COUNTS.get(int(n), "plot only"), ours)
    t.caption = "paper: " + paper.LABEL_COUNTS_NOTE
    return t


if __name__ == "__main__":
    sys.exit(main(SEARCH_SPACES / "label_counts.yaml", __doc__, compare=compare, extra_flags=flags, adjust=adjust))
