"""LAGM with 2, 10, 30, 150 and 1500 labelled images (the paper's Figure 2 on CelebAMask-HQ).

    python experiments/label_counts.py --quick                        # the embedded faces
    python experiments/label_counts.py --dataset celebamask-hq --root /data/CelebAMask-HQ \
        --generator /weights/celeba_g.pkl                             # --root alone also means CelebAMask-HQ
    python experiments/label_counts.py --root /data/CelebAMask-HQ --quick --labels 2,10
    ray job submit --working-dir . -- python experiments/label_counts.py --quick

Without --generator the embedded toy faces generator labels the synthetic images; its 8 classes are
CelebAMask-HQ's merged 8 (Table A.1), so it runs on the real labelled images as they are.
"""

import sys

import _path  # noqa: F401
from rich.table import Table

from lagm_ray import paper
from lagm_ray.data.datasets import canonical_dataset_name
from lagm_ray.errors import ConfigError
from lagm_ray.sweep_command import SEARCH_SPACES, main
from lagm_ray.sweep_spec import Domain


def flags(ap):
    ap.add_argument("--dataset", help="embedded (the toy faces) or celebamask-hq; default: celebamask-hq when "
                                      "--root is given, else embedded")
    ap.add_argument("--root", help="CelebAMask-HQ root (its release layout): run on it instead of the embedded faces")
    ap.add_argument("--generator", help="generator checkpoint (NVlabs pickle or lagm_ray .pt); default: the "
                                        "embedded faces generator")
    ap.add_argument("--labels", help="comma-separated label counts instead of the paper's 2,10,30,150,1500")


def adjust(spec, args):
    dataset = canonical_dataset_name(args.dataset) if args.dataset else ("celebamask_hq" if args.root else "embedded")
    if dataset not in ("embedded", "celebamask_hq"):
        raise ConfigError(f"--dataset {args.dataset}: this sweep runs on celebamask-hq or the embedded faces")
    if args.labels:
        try:
            labels = [int(n) for n in args.labels.split(",") if n.strip()]
        except ValueError:
            raise ConfigError(f"--labels {args.labels}: expected comma-separated integers, e.g. 2,10") from None
        for n in labels:  # each value must make a valid config (data.num_labelled >= 1)
            spec.base.replace({"data.num_labelled": n}, source=f"--labels {args.labels}")
        spec.space["data.num_labelled"] = Domain("grid", labels)
        if args.name is None:  # a shrunk grid must not restore (or be restored as) the full sweep
            spec.name += "-labels" + "-".join(map(str, labels))
    if args.generator:
        spec.base = spec.base.replace({"generator.checkpoint": args.generator})
    if dataset == "celebamask_hq":
        if not args.root:
            raise ConfigError("--dataset celebamask-hq needs --root DIR (the folder holding CelebA-HQ-img/)")
        spec.base = spec.base.replace({"data.dataset": "celebamask_hq", "data.root": args.root})
        spec.name = spec.name.replace("label_counts", "label_counts_celebamask")
        require_images(spec)
    elif args.root:
        raise ConfigError("--root is for --dataset celebamask-hq")
    return spec


def require_images(spec):
    """Fail before Ray starts when the root lacks images the grid needs (every trial would fail)."""
    from lagm_ray.data import celebamask

    d = spec.base.data
    need = {"train": max(spec.space["data.num_labelled"].values), "val": d.num_val, "test": d.num_test}
    for split, n in need.items():
        paths = [celebamask.image_path(d.root, i) for i in celebamask.split_ids(split, n)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            hint = " (fewer labels: --labels 2,10)" if split == "train" else f" (fewer: --set data.num_{split}=N)"
            raise ConfigError(f"{missing[0]}: not found; {len(missing)} of the first {n} {split} images the sweep "
                              f"needs are missing{hint}")


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
    sys.exit(main(SEARCH_SPACES / "label_counts.yaml", __doc__, compare=compare, extra_flags=flags, adjust=adjust,
                  paper=paper.LABEL_COUNTS, paper_note=paper.LABEL_COUNTS_NOTE))
