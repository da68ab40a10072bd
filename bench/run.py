"""Benchmarks, measured as ratios taken in one run (never as timing assertions in tests).

    python bench/run.py                # everything; gradient matching on DeepLabv3-ResNet101 / U-Net 64
    python bench/run.py --quick        # small networks, a few steps: a smoke test of the bench itself
    python bench/run.py --only ray     # just the Ray ratios (ray_train_over_plain, tune_over_optuna)
    python bench/run.py --only memory  # peak memory of LAGM's FPN annotator over DatasetGAN's MLP ensemble

Gradient matching by matched blocks (Table 2 and Table C.8): seconds per *whole* Algorithm-1 step
(generator, annotator, both gradients, annotator update, segmentor update) for each block choice,
divided by the step time of matching All. Results are merged into bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lagm_ray.methods import load_config  # noqa: E402
from lagm_ray.storage import atomic_write_text  # noqa: E402
from lagm_ray.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results.json"

DEEPLAB_BLOCKS = {"All": ["All"], "Res2..Head": ["Res2", "Res3", "Res4", "Res5", "Head"],
                  "Res3..Head": ["Res3", "Res4", "Res5", "Head"], "Res4..Head": ["Res4", "Res5", "Head"],
                  "Res5..Head": ["Res5", "Head"], "Head": ["Head"]}
UNET_BLOCKS = {b: [b] for b in ("All", "Up", "Down", "Input", "Output", "U1", "U2")}
PAPER = {"deeplab": {"All": 3.34, "Res2..Head": 3.34, "Res3..Head": 3.28, "Res4..Head": 3.08,
                     "Res5..Head": 1.62, "Head": 1.0},
         "unet": {"All": 1.0, "Up": 0.65, "Down": 0.73, "Input": 0.73, "Output": 0.34, "U1": 0.71, "U2": 0.63}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA kernels run asynchronously: time what has finished


def gpu_utilisation(device: torch.device) -> float | None:
    """The GPU's utilisation in % as NVML reports it (None on CPU or without pynvml)."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or NVML unavailable
        return None


def seconds_per_step(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float | None]:
    """Median seconds of a whole train step, and the mean GPU utilisation sampled after each step."""
    for _ in range(warmup):
        trainer.train_step()
    _sync(trainer.device)
    times, util = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        _sync(trainer.device)
        times.append(time.perf_counter() - t0)
        u = gpu_utilisation(trainer.device)
        if u is not None:
            util.append(u)
    return statistics.median(times), (statistics.mean(util) if util else None)


def bench_blocks(kind: str, width: int | None, blocks: dict[str, list[str]], resolution: int, steps: int,
                 warmup: int, batch: int, device: str) -> tuple[dict[str, float], dict[str, float | None]]:
    """Seconds per step and GPU utilisation (None on CPU) for each choice of matched blocks."""
    base = {"segmentor.kind": kind, "segmentor.width": width, "data.resolution": 64,
            "data.seg_resolution": resolution, "data.num_labelled": batch, "data.num_val": 4, "data.num_test": 4,
            "train.labelled_batch_size": batch, "train.synthetic_batch_size": batch, "tracking.enabled": False,
            "annotator.width": 32, "run.device": device}
    out, util = {}, {}
    for name, b in blocks.items():
        trainer = Trainer(load_config(None, {**base, "train.matched_blocks": b}))
        out[name], util[name] = seconds_per_step(trainer, steps, warmup)
        print(f"  {kind} {name:>11}: {1000 * out[name]:8.1f} ms/step", flush=True)
    return out, util


# ------------------------------------------------------------------------------------ Ray ratios

# The same small LAGM run for every Ray measurement: the quickstart networks, evaluation only at the end.
RAY_WORK = {"train.eval_interval": 10_000, "train.checkpoint_interval": 10, "train.log_interval": 10,
            "data.num_val": 16, "data.num_test": 16, "eval.num_annotator_samples": 8, "tracking.enabled": False,
            "train.synthetic_pool": 0}  # the generator in every step, as these were first measured
QUICKSTART = ROOT / "lagm_ray" / "configs" / "quickstart.yaml"


def bench_ray_train(steps: int, tmp: Path) -> dict[str, float]:
    """steps/s of a 1-worker TorchTrainer against the plain loop, same config, both on one thread and
    both checkpointing every 10 steps. Ray's steps/s is taken inside the worker (fit wall time, reports
    and checkpoints included); its start-up (worker actor, process group) is reported beside it."""
    import ray

    from lagm_ray.distributed.train import ray_fit
    from lagm_ray.trainer import LocalCheckpoints

    cfg = load_config(QUICKSTART, {**RAY_WORK, "train.steps": steps, "run.num_threads": 1,
                                   "train.eval_interval": steps})
    def plain_loop() -> float:
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        trainer.fit([LocalCheckpoints(tmp / "plain")], pictures=False)
        return steps / (time.perf_counter() - t0)

    plain_loop()  # warm-up: the first run in a process pays one-off costs (allocator, lazy inits)
    plain = plain_loop()
    print(f"  plain loop: {plain:.3f} steps/s", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        result = ray_fit(cfg, storage_path=str(tmp / "ray"), name="bench", resume=False)
        total = time.perf_counter() - t0
    finally:
        ray.shutdown()
    inside = steps / result.metrics["time/fit_elapsed_s"]
    print(f"  Ray Train, 1 worker: {inside:.3f} steps/s inside the worker; {total:.1f} s in all", flush=True)
    return {"ray_train_over_plain": inside / plain, "ray_train_steps_per_s": inside, "plain_steps_per_s": plain,
            "ray_train_total_s": total, "plain_total_s": steps / plain,
            "ray_train_startup_s": total - result.metrics["time/fit_elapsed_s"]}


def _objective_config(params: dict, steps: int, threads: int):
    return load_config(QUICKSTART, {**RAY_WORK, **params, "train.steps": steps, "train.eval_interval": steps,
                                    "run.num_threads": threads})


def bench_tune_vs_optuna(trials: int, steps: int, tmp: Path) -> dict[str, float]:
    """Wall time of `trials` LAGM trials: Ray Tune + OptunaSearch with 2 concurrent 1-thread trials
    (Ray start-up included) against sequential Optuna in this process with 2 threads.

    Also, in the same run, the ratio an overhead-free Tune would reach on this machine: one 1-thread
    trial alone in this process, times the rounds of 2 concurrent trials, over the sequential time. It
    separates what the cores allow (how much faster 2 threads make one trial) from what Ray adds."""
    import optuna
    import ray
    import yaml

    from lagm_ray.distributed.sweep import run_sweep
    from lagm_ray.sweep_spec import load_sweep

    space = {"train.annotator_optim.lr": {"loguniform": [1e-4, 1e-2]}}

    def objective(trial: optuna.Trial, threads: int = 2) -> float:
        lr = trial.suggest_float("train.annotator_optim.lr", 1e-4, 1e-2, log=True)
        return Trainer(_objective_config({"train.annotator_optim.lr": lr}, steps, threads)).fit(
            pictures=False).metrics["val/fg_miou"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)).optimize(objective, trials)
    sequential = time.perf_counter() - t0
    print(f"  sequential Optuna, 2 threads: {sequential:.1f} s for {trials} trials", flush=True)
    t0 = time.perf_counter()
    objective(optuna.trial.FixedTrial({"train.annotator_optim.lr": 1e-3}), threads=1)
    one_thread_trial = time.perf_counter() - t0
    rounds = -(-trials // 2)
    print(f"  one trial alone, 1 thread: {one_thread_trial:.1f} s; {rounds} rounds of 2 would take "
          f"{rounds * one_thread_trial:.1f} s without any overhead", flush=True)

    base = _objective_config({}, steps, 1)
    (tmp / "base.yaml").write_text(base.to_yaml())
    (tmp / "tune.yaml").write_text(yaml.safe_dump({
        "name": "bench_tune", "base": str(tmp / "base.yaml"), "space": space, "searcher": "optuna",
        "num_samples": trials, "max_concurrent_trials": 2, "resources": {"workers": 1, "cpus_per_worker": 1}}))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    tuner_started = time.time()
    try:
        results, _ = run_sweep(load_sweep(tmp / "tune.yaml"), storage_path=str(tmp / "tune"), resume=False, verbose=0)
    finally:
        ray.shutdown()
    tune_s = time.perf_counter() - t0
    assert not [r for r in results if r.error], [r.error for r in results if r.error]
    # Fixed start-up before any trial trains: Tune's set-up, the trial processes (importing torch) and
    # the first trainers' construction.
    first_trial_s = min(r.metrics["time/fit_started_unix_s"] for r in results) - tuner_started
    print(f"  Ray Tune + Optuna, 2 concurrent: {tune_s:.1f} s for {trials} trials ({ray_init_s:.1f} s of ray.init, "
          f"then {first_trial_s:.1f} s until the first trial trained)", flush=True)
    return {"tune_over_optuna": tune_s / sequential, "tune_seconds": tune_s, "optuna_sequential_seconds": sequential,
            "tune_trials": trials, "tune_trial_steps": steps, "optuna_seconds_per_trial": sequential / trials,
            "tune_ray_init_s": ray_init_s, "trial_1thread_alone_s": one_thread_trial,
            "tune_overhead_free_over_optuna": rounds * one_thread_trial / sequential,
            "tune_until_first_trial_s": first_trial_s,
            "tune_over_optuna_ray_running": (tune_s - ray_init_s) / sequential}


# ------------------------------------------------------------------------------------ Ray Data generation


def bench_datagen(tmp: Path, images: int, small: int) -> dict[str, float]:
    """images/s of `lagm generate` with 2 CPUs (2 actors) over 1 CPU (1 actor), wall time including the
    actors' start-up; and peak memory (driver plus the largest actor) writing 10x the images over 1x.
    The shipped faces generator and an untrained quickstart annotator (the cost does not depend on its
    weights); 500-image shards."""
    import resource

    import ray

    from lagm_ray.datagen import GenerationSpec
    from lagm_ray.distributed.generate import generate_dataset

    cfg = load_config(QUICKSTART, {**RAY_WORK, "train.steps": 1})
    annotator = tmp / "annotator" / "best.pt"
    Trainer(cfg).save_best(annotator)

    def run(cpus: int, n: int, name: str) -> tuple[float, float]:
        peaks: list[float] = []
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            generate_dataset(annotator, tmp / name, GenerationSpec(num_images=n, shard_size=500), concurrency=cpus,
                             on_shard=lambda plan, entry: peaks.append(entry["peak_rss_mb"]))
            seconds = time.perf_counter() - t0
        finally:
            ray.shutdown()
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  {n} images on {cpus} CPU: {n / seconds:.1f} images/s; peak RSS driver {driver:.0f} MB, "
              f"actor {max(peaks):.0f} MB", flush=True)
        return n / seconds, driver + max(peaks)

    one, _ = run(1, images, "one_cpu")
    two, _ = run(2, images, "two_cpus")
    _, rss_1x = run(2, small, "x1")
    _, rss_10x = run(2, 10 * small, "x10")
    return {"datagen_2cpu_over_1cpu": two / one, "datagen_images_per_s_1cpu": one, "datagen_images_per_s_2cpu": two,
            "datagen_rss_10x_over_1x": rss_10x / rss_1x, "datagen_rss_mb_1x": rss_1x, "datagen_rss_mb_10x": rss_10x,
            "datagen_setting": {"images": images, "rss_images_1x": small, "shard_size": 500, "batch_size": 16,
                                "generator": "embedded:faces", "resolution": 64}}


# ------------------------------------------------------------------------------------ annotator memory


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of tensors alive at once while ``fn()`` runs, counting only what it allocates (its inputs
    already exist): the CPU allocator's alloc/free events recorded by torch.profiler, summed in time order.
    Exact for tensor memory, unlike RSS (which the process's earlier peaks and malloc's caching blur)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# The two settings: the paper's (Cat-16: a 256 px StyleGAN2, config-f widths 512 up to 64 px, then 256, 128;
# 16 classes) on random features of those shapes, since memory depends on shapes, not values; and the
# quickstart's embedded faces generator (64 px, 8 classes).
MEMORY_SETTINGS = {
    "paper_256px": {"channels": [512, 512, 512, 512, 512, 256, 128], "classes": 16, "batch": 1},
    "quickstart_64px": {"channels": "embedded:faces", "classes": 8, "batch": 8},
}


def bench_annotator_memory() -> dict:
    """Both annotators label the same batch of generator features at the finest block's resolution (eval mode,
    no graph): LAGM's FPN (width 128, the reference) and DatasetGAN's ensemble (10 MLPs 128-32), once as
    DatasetGAN's release runs it (the whole upsampled feature map at once: chunk_pixels = every pixel) and
    once as lagm_ray runs it (datasetgan.chunk_pixels = 16384)."""
    from lagm_ray.methods.datasetgan import DatasetGANSettings, StyleInterpreter
    from lagm_ray.models.annotator import FPNAnnotator
    from lagm_ray.synthetic import SyntheticSource

    d = DatasetGANSettings()
    out: dict = {}
    for name, s in MEMORY_SETTINGS.items():
        torch.manual_seed(0)
        if isinstance(s["channels"], str):
            source = SyntheticSource.from_spec(s["channels"])
            features = source.sample(s["batch"], seed=0).features
        else:
            features = [torch.randn(s["batch"], c, 4 * 2**i, 4 * 2**i) for i, c in enumerate(s["channels"])]
        channels, size = [f.shape[1] for f in features], features[-1].shape[-1]
        fpn = FPNAnnotator(channels, s["classes"], 128).eval()
        models = {"fpn": fpn}
        for label, chunk in (("mlp_whole_map", s["batch"] * size * size), ("mlp_chunked", d.chunk_pixels)):
            models[label] = StyleInterpreter(sum(channels), s["classes"], d.hidden, d.num_classifiers, size, chunk).eval()
        mb = {}
        for label, model in models.items():
            with torch.no_grad():
                mb[label] = peak_tensor_bytes(lambda: model(features)) / 2**20
            print(f"  {name} {label:>13}: peak {mb[label]:8.1f} MiB", flush=True)
        out[name] = {"peak_mib": mb, "feature_channels": sum(channels), "resolution": size, "batch": s["batch"],
                     "classes": s["classes"], "fpn_over_mlp": mb["fpn"] / mb["mlp_whole_map"],
                     "fpn_over_mlp_chunked": mb["fpn"] / mb["mlp_chunked"]}
    paper = out["paper_256px"]
    return {"fpn_over_mlp_memory": paper["fpn_over_mlp"], "fpn_over_mlp_chunked_memory": paper["fpn_over_mlp_chunked"],
            "annotator_memory": {**out, "method": "torch.profiler CPU allocator events, peak of live tensor bytes "
                                 "allocated during one labelling call (inputs excluded)", "fpn_width": 128,
                                 "mlp": {"members": d.num_classifiers, "hidden": d.hidden}}}


def merge_results(r: dict, targets: dict[str, str], path: Path = RESULTS) -> None:
    """Merge ``r`` into ``path`` (bench/results.json; atomically) and print the headline ratios beside their
    targets."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(r)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))
    print()
    for key, target in targets.items():
        print(f"{key} = {r[key]:.3f} (target {target})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small networks and few steps")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--only", choices=["gm", "ray", "data", "memory"], help="one group of benchmarks")
    ap.add_argument("--trial-steps", type=int, default=16, help="steps per Tune/Optuna trial (about 10 s each)")
    ap.add_argument("--device", default="auto", help="gradient-matching bench device: auto (CUDA when present), cpu, cuda")
    ap.add_argument("--resolution", type=int, default=None,
                    help="segmentor input size (default: 32 quick, 64 on CPU, 256 on a GPU as in the paper)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSON file results are merged into")
    args = ap.parse_args()
    if args.only in (None, "memory"):
        print("Annotator memory: LAGM's FPN against DatasetGAN's MLP ensemble, same features", flush=True)
        merge_results(bench_annotator_memory(), {"fpn_over_mlp_memory": "<= 0.2"}, args.results)
    if args.only in (None, "data"):
        with tempfile.TemporaryDirectory() as d:
            print("Ray Data generation: 1 CPU against 2, and memory at 1x and 10x the images", flush=True)
            r = bench_datagen(Path(d), 1000 if args.quick else 3000, 100 if args.quick else 500)
        merge_results(r, {"datagen_2cpu_over_1cpu": ">= 1.7", "datagen_rss_10x_over_1x": "<= 1.2"}, args.results)
    if args.only in (None, "ray"):
        with tempfile.TemporaryDirectory() as d:
            print("Ray Train (1 worker) against the plain loop", flush=True)
            r = bench_ray_train(20 if args.quick else 60, Path(d))
            print("Ray Tune + Optuna against sequential Optuna", flush=True)
            r.update(bench_tune_vs_optuna(4 if args.quick else 8, args.trial_steps, Path(d)))
        r["ray_setting"] = {"quick": args.quick, "device": "cpu", "machine": platform.machine(), "cpus": os.cpu_count()}
        merge_results(r, {"ray_train_over_plain": ">= 0.95", "tune_over_optuna": "<= 0.7"}, args.results)
    if args.only not in (None, "gm"):
        return
    from lagm_ray.config import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(2)
    steps = args.steps or (3 if args.quick else 8)
    warmup = 1 if args.quick else 2
    if args.quick:
        deeplab = ("deeplabv3_resnet18", 16)
        unet = ("unet", 16)
    else:
        deeplab = ("deeplabv3_resnet101", None)
        unet = ("unet", 64)
    res = args.resolution or (32 if args.quick else 256 if device.type == "cuda" else 64)
    print(f"gradient matching by block: {deeplab[0]} and {unet[0]} at {res} px, batch 2, {device}", flush=True)
    d, d_util = bench_blocks(*deeplab, DEEPLAB_BLOCKS, res, steps, warmup, 2, str(device))
    u, u_util = bench_blocks(*unet, UNET_BLOCKS, res, steps, warmup, 2, str(device))

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.update({
        "gm_head_over_all_deeplab": d["Head"] / d["All"],
        "gm_output_over_all_unet": u["Output"] / u["All"],
        "gm_blocks_deeplab": {k: v / d["Head"] for k, v in d.items()},  # paper's Table 2 is relative to Head
        "gm_blocks_unet": {k: v / u["All"] for k, v in u.items()},  # Table C.8 is relative to All
        "gm_seconds_per_step": {"deeplab": d, "unet": u},
        "gm_steps_per_second": {"deeplab": {k: 1 / v for k, v in d.items()}, "unet": {k: 1 / v for k, v in u.items()}},
        "gm_gpu_utilisation_percent": {"deeplab": d_util, "unet": u_util} if device.type == "cuda" else None,
        "gm_setting": {"deeplab": deeplab[0], "deeplab_width": deeplab[1], "unet_width": unet[1],
                       "seg_resolution": res, "batch": 2, "steps": steps, "quick": args.quick,
                       "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       "threads": torch.get_num_threads(), "machine": platform.machine()},
    })
    atomic_write_text(args.results, json.dumps(results, indent=2, sort_keys=True))
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
