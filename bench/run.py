"""Benchmarks, measured as ratios taken in one run (never as timing assertions in tests).

    python bench/run.py            # full: DeepLabv3-ResNet101 at full width, U-Net at width 64
    python bench/run.py --quick    # small networks, a few steps: a smoke test of the bench itself

Gradient matching by matched blocks (Table 2 and Table C.8): seconds per *whole* Algorithm-1 step
(generator, annotator, both gradients, annotator update, segmentor update) for each block choice,
divided by the step time of matching All. Results are merged into bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lagm_ray.config import load_config  # noqa: E402
from lagm_ray.io import atomic_write_text  # noqa: E402
from lagm_ray.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results.json"

DEEPLAB_BLOCKS = {"All": ["All"], "Res2..Head": ["Res2", "Res3", "Res4", "Res5", "Head"],
                  "Res3..Head": ["Res3", "Res4", "Res5", "Head"], "Res4..Head": ["Res4", "Res5", "Head"],
                  "Res5..Head": ["Res5", "Head"], "Head": ["Head"]}
UNET_BLOCKS = {b: [b] for b in ("All", "Up", "Down", "Input", "Output", "U1", "U2")}
PAPER = {"deeplab": {"All": 3.34, "Res2..Head": 3.34, "Res3..Head": 3.28, "Res4..Head": 3.08,
                     "Res5..Head": 1.62, "Head": 1.0},
         "unet": {"All": 1.0, "Up": 0.65, "Down": 0.73, "Input": 0.73, "Output": 0.34, "U1": 0.71, "U2": 0.63}}


def seconds_per_step(trainer: Trainer, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        trainer.train_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_blocks(kind: str, width: int | None, blocks: dict[str, list[str]], resolution: int, steps: int,
                 warmup: int, batch: int) -> dict[str, float]:
    base = {"segmentor.kind": kind, "segmentor.width": width, "data.resolution": 64,
            "data.seg_resolution": resolution, "data.num_labelled": batch, "data.num_val": 4, "data.num_test": 4,
            "train.labelled_batch_size": batch, "train.synthetic_batch_size": batch, "tracking.enabled": False,
            "annotator.width": 32}
    out = {}
    for name, b in blocks.items():
        trainer = Trainer(load_config(None, {**base, "train.matched_blocks": b}))
        out[name] = seconds_per_step(trainer, steps, warmup)
        print(f"  {kind} {name:>11}: {1000 * out[name]:8.1f} ms/step", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small networks and few steps")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    steps = args.steps or (3 if args.quick else 8)
    warmup = 1 if args.quick else 2
    if args.quick:
        deeplab = ("deeplabv3_resnet18", 16)
        unet = ("unet", 16)
    else:
        deeplab = ("deeplabv3_resnet101", None)
        unet = ("unet", 64)
    res = 32 if args.quick else 64
    print(f"gradient matching by block: {deeplab[0]} and {unet[0]} at {res} px, batch 2", flush=True)
    d = bench_blocks(*deeplab, DEEPLAB_BLOCKS, res, steps, warmup, 2)
    u = bench_blocks(*unet, UNET_BLOCKS, res, steps, warmup, 2)

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({
        "gm_head_over_all_deeplab": d["Head"] / d["All"],
        "gm_output_over_all_unet": u["Output"] / u["All"],
        "gm_blocks_deeplab": {k: v / d["Head"] for k, v in d.items()},  # paper's Table 2 is relative to Head
        "gm_blocks_unet": {k: v / u["All"] for k, v in u.items()},  # Table C.8 is relative to All
        "gm_seconds_per_step": {"deeplab": d, "unet": u},
        "gm_setting": {"deeplab": deeplab[0], "deeplab_width": deeplab[1], "unet_width": unet[1],
                       "seg_resolution": res, "batch": 2, "steps": steps, "quick": args.quick,
                       "device": "cpu", "threads": torch.get_num_threads(), "machine": platform.machine()},
    })
    atomic_write_text(RESULTS, json.dumps(results, indent=2, sort_keys=True))
    print("\n| blocks (DeepLabv3) | ours, time/step vs Head | paper Table 2 |")
    print("|---|---|---|")
    for k in DEEPLAB_BLOCKS:
        print(f"| {k} | {d[k] / d['Head']:.2f}x | {PAPER['deeplab'][k]:.2f}x |")
    print("\n| blocks (U-Net) | ours, time/step vs All | paper Table C.8 |")
    print("|---|---|---|")
    for k in UNET_BLOCKS:
        print(f"| {k} | {u[k] / u['All']:.2f}x | {PAPER['unet'][k]:.2f}x |")
    print(f"\ngm_head_over_all_deeplab = {results['gm_head_over_all_deeplab']:.3f} (target <= 0.30)")
    print(f"gm_output_over_all_unet = {results['gm_output_over_all_unet']:.3f} (target <= 0.34)")


if __name__ == "__main__":
    main()
