"""Ablation of the segmentor's input resolution (the paper's Table C.9): 64, 32, 16 px from the 64 px
toy generator, standing in for the paper's 512, 256, 128 px from a 512 px GAN.

    python experiments/ablation_resolution.py --quick
    ray job submit --working-dir . -- python experiments/ablation_resolution.py --quick
"""

import sys

import _path  # noqa: F401

from lagm_ray import paper
from lagm_ray.sweep_command import SEARCH_SPACES, comparison_table, main

# The paper's resolutions are 1, 1/2, 1/4 of its generator's; ours are the same fractions of 64 px.
OURS = {512: 64, 256: 32, 128: 16}


def compare(df):
    return comparison_table("Table C.9: segmentor input resolution (paper px -> ours px), time/step relative to full",
                            "data.seg_resolution", df, paper.TABLE_C9_RESOLUTION, reference=64, ours_label=OURS.get)


if __name__ == "__main__":
    sys.exit(main(SEARCH_SPACES / "ablation_resolution.yaml", __doc__, compare=compare,
                  paper=paper.TABLE_C9_RESOLUTION,
                  paper_note="Table C.9 (Face-34, U-Net): px -> (time/step vs 512, mIoU %)"))
