"""The paper's numbers that experiments/ and bench/ print beside ours (LAGM, ICLR 2022)."""

# Table 2 (Cat-16, StyleGAN2 + DeepLabv3-ResNet101): time/step relative to Head-only, mIoU %.
TABLE2_DEEPLAB_BLOCKS = {
    "All": (3.34, "33.71 ± 0.77"), "Res2..Head": (3.34, "34.38 ± 0.49"), "Res3..Head": (3.28, "33.81 ± 0.99"),
    "Res4..Head": (3.08, "33.78 ± 0.70"), "Res5..Head": (1.62, "34.12 ± 0.57"), "Head": (1.00, "33.56 ± 0.17"),
}
# Table C.8 (Cat-16, StyleGAN2 + U-Net): time/step relative to All, mIoU %.
TABLE_C8_UNET_BLOCKS = {
    "All": (1.00, "31.90 ± 0.75"), "Up": (0.65, "30.12 ± 0.43"), "Down": (0.73, "14.42 ± 0.23"),
    "Input": (0.73, "12.40 ± 0.40"), "Output": (0.34, "25.41 ± 0.77"), "U1": (0.71, "30.18 ± 0.79"),
    "U2": (0.63, "31.22 ± 0.48"),
}
# Table C.9 (Face-34, U-Net downstream): segmentor input resolution -> (time/step vs 512, mIoU %).
TABLE_C9_RESOLUTION = {512: (1.00, "51.93 ± 0.28"), 256: (0.45, "50.71 ± 0.39"), 128: (0.37, "45.53 ± 0.31")}
# Figure 4 gives K only as curves; the text: "typically K = 1 works well in practice".
K_ABLATION = ("Figure 4 (curves only, no table; Face-34 and Cat-16, DeepLabv3): the annotator learns "
              "significantly faster when the segmentor is updated more often; K = 1 works well")
# Figure 2 gives CelebA FG-mIoU for 2, 10, 30, 150, 1500 labels as a plot; Table C.11 gives 1,500 labels: 77.90.
LABEL_COUNTS = {1500: "77.90 (Table C.11)"}
LABEL_COUNTS_NOTE = "Figure 2 (CelebA, plot only) for 2..150 labels; Table C.11 for 1,500"

# ---- The method comparison (experiments/compare_methods.py). Face-34 is the papers' closest setting
# to the embedded faces; numbers are mIoU % including background, mean ± std over DatasetGAN's five
# cross-validation folds, StyleGAN2 generator unless noted. Keyed by our train.method.
METHODS_FACE34 = {
    "lagm": "53.58 ± 0.45 U-Net, 55.10 ± 0.39 DeepLabv3 (LAGM Table 1)",
    "supervised": "45.77 ± 1.51 transfer learning, DeepLabv3 (LAGM Table 1, from DatasetGAN)",
    "datasetgan": "53.84 ± 0.41 U-Net, 54.55 ± 0.25 DeepLabv3, StyleGAN (LAGM Table 1); "
                  "53.46 ± 1.21 (GANORCON Table 1)",
    "inversion": "48.57 ± 0.38 U-Net, 47.87 ± 0.86 DeepLabv3 (LAGM Table C.5)",
    "pseudo_label": "43.26 ± 1.20 U-Net, 42.15 ± 0.68 DeepLabv3 (LAGM Table C.6)",
    "maml": "32.64 ± 0.18 1-step U-Net, 33.82 ± 0.24 1-step DeepLabv3, 39.04 ± 0.23 2-step DeepLabv3 "
            "(LAGM Table C.7)",
    "ganorcon": "54.06 ± 0.15 CONV + distill, 53.41 MLP + distill (GANORCON Tables 1-2)",
    "repurposegan": "not reported on Face-34 (GANORCON Table 2's ReGAN/Face10 setting: 77.37 MoCo MLP distill)",
    "layermatch": "not reported on Face-34 (CelebA-HQ label fractions only, LayerMatch Figure 5)",
}
# The orderings the papers claim, as (better, worse) pairs of our method names.
METHOD_ORDERINGS = [
    ("lagm", "supervised", "LAGM Table 1 / Figure 2: few labels, LAGM above supervised-only"),
    ("lagm", "inversion", "LAGM Table C.5"),
    ("lagm", "pseudo_label", "LAGM Table C.6"),
    ("lagm", "maml", "LAGM Table C.7 (1-2 unrolled steps)"),
    ("inversion", "pseudo_label", "LAGM Tables C.5-C.6 on Face-34"),
    ("ganorcon", "datasetgan", "GANORCON Table 1 (CONV + distill)"),
    ("datasetgan", "supervised", "DatasetGAN / LAGM Table 1"),
]
# DatasetGAN's ablations on ADE-Car-12 (16 annotated images), mIoU %.
DATASETGAN_SET_SIZE = {3000: "43.34", 5000: "44.37", 10000: "44.60", 20000: "45.04"}  # Table 3
DATASETGAN_FILTER_RATIO = {0.0: "44.60", 0.05: "44.89", 0.10: "45.64", 0.20: "45.18"}  # Table 4
