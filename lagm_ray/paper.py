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
