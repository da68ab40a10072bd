"""Ablation of the blocks gradient matching uses, with time per step: the paper's Table 2 (DeepLabv3)
and Table C.8 (U-Net).

    python experiments/ablation_blocks.py --quick                 # both tables, minutes on 2 CPUs
    python experiments/ablation_blocks.py --only unet --steps 3000
    ray job submit --working-dir . -- python experiments/ablation_blocks.py --quick

Trials run one at a time with 2 CPUs each, so their time/step is comparable.
"""

import sys

import _path  # noqa: F401

from lagm_ray import paper
from lagm_ray.sweep_command import SEARCH_SPACES, comparison_table, main

DEEPLAB_KEYS = {"All": "All", "Res2..Head": "Res2,Res3,Res4,Res5,Head", "Res3..Head": "Res3,Res4,Res5,Head",
                "Res4..Head": "Res4,Res5,Head", "Res5..Head": "Res5,Head", "Head": "Head"}


def compare_deeplab(df):
    return comparison_table("Table 2, DeepLabv3 (time/step relative to Head)", "train.matched_blocks", df,
                            paper.TABLE2_DEEPLAB_BLOCKS, reference="Head", ours_label=DEEPLAB_KEYS.get)


def compare_unet(df):
    return comparison_table("Table C.8, U-Net (time/step relative to All)", "train.matched_blocks", df,
                            paper.TABLE_C8_UNET_BLOCKS, reference="All")


def flags(ap):
    ap.add_argument("--only", choices=["deeplab", "unet"], help="run one of the two tables")


if __name__ == "__main__":
    only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), None)
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
    code = 0
    tables = {"deeplab": (compare_deeplab, paper.TABLE2_DEEPLAB_BLOCKS, "Table 2 (Cat-16, DeepLabv3-ResNet101)"),
              "unet": (compare_unet, paper.TABLE_C8_UNET_BLOCKS, "Table C.8 (Cat-16, U-Net)")}
    for which, (compare, table, note) in tables.items():
        if only in (None, which):
            code |= main(SEARCH_SPACES / f"ablation_blocks_{which}.yaml", __doc__, compare=compare, extra_flags=flags,
                         paper=table, paper_note=note + ": blocks -> (time/step relative, mIoU %)")
    sys.exit(code)
