"""Every method through the same runner: LAGM beside supervised-only, its own baselines (pseudo-labelling,
inversion, K-step MAML; LAGM Appendix C) and the compared papers' methods (DatasetGAN, RepurposeGAN,
GANORCON, LayerMatch), on the same category, label count and seeds.

    python experiments/compare_methods.py --quick            # embedded faces, 10 labels, 3 seeds, 2 CPUs
    python experiments/compare_methods.py --methods lagm,datasetgan --seeds 0,1
    ray job submit --working-dir . -- python experiments/compare_methods.py

Runs search_spaces/compare_methods.yaml as a Ray Tune grid (method x seed): one MLflow child run per
method and seed; the parent run holds the per-trial table and the mean ± std per method with a bar
chart (summary_over_seeds.*). Prints the papers' numbers and orderings beside ours.
"""

import sys

import _path  # noqa: F401
from rich.table import Table

from lagm_ray import paper
from lagm_ray.sweep_command import SEARCH_SPACES, main


def flags(ap):
    ap.add_argument("--methods", help="comma-separated subset of methods (default: all in the sweep file)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the sweep file's, 0,1,2)")


def adjust(spec, args):
    if args.methods:
        spec.set_grid("train.method", [m.strip() for m in args.methods.split(",") if m.strip()])
    if args.seeds:
        spec.set_grid("run.seed", [int(s) for s in args.seeds.split(",")])
    return spec


def _cell(rows, col, percent=True):
    if col not in rows or rows[col].isna().all():
        return ""
    m, s = rows[col].mean(), rows[col].std(ddof=1)
    f = 100 if percent else 1
    return f"{f * m:.1f}" + (f" ± {f * s:.1f}" if len(rows) > 1 and s == s else "")


def compare(df):
    t = Table(title="methods: ours (embedded faces, mean ± std over seeds) beside the papers (Face-34 mIoU %)")
    for c in ("method", "seeds", "ours test FG-mIoU %", "ours test mIoU %", "ours annotator vs truth %", "papers"):
        t.add_column(c, justify="left" if c in ("method", "papers") else "right", overflow="fold")
    groups = dict(tuple(df.groupby("train.method")))
    order = sorted(groups, key=lambda m: -groups[m]["test FG-mIoU"].mean() if "test FG-mIoU" in df else 0)
    for m in order:
        rows = groups[m]
        t.add_row(m, str(len(rows)), _cell(rows, "test FG-mIoU"), _cell(rows, "test mIoU"),
                  _cell(rows, "annotator mIoU vs truth"), paper.METHODS_FACE34.get(m, ""))
    means = {m: groups[m]["test FG-mIoU"].mean() for m in groups} if "test FG-mIoU" in df else {}
    lines = []
    for better, worse, source in paper.METHOD_ORDERINGS:
        if better in means and worse in means:
            agree = "agrees" if means[better] > means[worse] else "DISAGREES"
            lines.append(f"{better} > {worse} ({source}): ours {agree} "
                         f"({100 * means[better]:.1f} vs {100 * means[worse]:.1f})")
    lines.append("DatasetGAN's own ablations (ADE-Car-12 mIoU %; run them with search_spaces/datasetgan_set_size.yaml "
                 "and datasetgan_filter_ratio.yaml): set size " +
                 ", ".join(f"{k // 1000}k {v}" for k, v in paper.DATASETGAN_SET_SIZE.items()) + "; filter ratio " +
                 ", ".join(f"{int(100 * k)}% {v}" for k, v in paper.DATASETGAN_FILTER_RATIO.items()))
    t.caption = "\n".join(lines)
    return t


if __name__ == "__main__":
    sys.exit(main(SEARCH_SPACES / "compare_methods.yaml", __doc__, compare=compare, extra_flags=flags,
                  adjust=adjust, paper=paper.METHODS_FACE34,
                  paper_note="Face-34 mIoU % incl. background, mean ± std over 5 folds (LAGM, GANORCON tables)"))
