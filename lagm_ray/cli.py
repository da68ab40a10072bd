"""`lagm` command line: each command parses its arguments, calls one library function and prints.

Each command imports what it calls inside its body: the library pulls in torch, MLflow and Ray (about
5 s on 2 cores), which `lagm --help` and a mistyped flag should not wait for."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CheckpointError, ConfigError, DataError

HELP_NAMES = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="LAGM (learning to annotate part segmentation with gradient matching) on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP_NAMES)
console = Console()

# One spelling per concept, in every command that has it.
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (defaults are the paper's).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a key, e.g. --set train.K=5 (repeatable).")
TrackOpt = typer.Option(True, "--track/--no-track", help="Log to MLflow (tracking.uri, else $MLFLOW_TRACKING_URI, "
                                                          "else sqlite:///mlflow.db).")
ExperimentOpt = typer.Option(None, "--experiment", help="MLflow experiment (default: the config's "
                                                          "tracking.experiment).")


# What a user can cause and fix: one line on stderr, exit status 2, no traceback (unless --debug).
# OSError covers a missing input, an output path through a file, an unwritable folder or a full disk;
# its message names the path.
USER_ERRORS = (ConfigError, DataError, CheckpointError, OSError)
DEBUG_ENV = "LAGM_DEBUG"
_debug = {"on": False}  # set by --debug for this call of main()


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(message: str, code: int = 2) -> None:
    """A user error: one line on stderr (plain text: messages quote keys and lists), exit status 2."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def show_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"lagm_ray {__version__}")
        raise typer.Exit()


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help=f"Show the traceback of a user error too "
                                                               f"(or set {DEBUG_ENV}=1)."),
            version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                         help="Print the version and exit.")):
    _debug["on"] = debug


def with_options(set_: Optional[list[str]], seed: Optional[int] = None, experiment: Optional[str] = None) -> list[str]:
    """The --set list with the dedicated flags folded in (they are spellings of config keys)."""
    extra = [f"run.seed={seed}"] if seed is not None else []
    extra += [f"tracking.experiment={experiment}"] if experiment else []
    return [*(set_ or []), *extra]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise ConfigError(f"--seeds names no seed: {text!r}")
    return seeds


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    from .metrics import drop_per_class  # imports torch: keep `lagm --help` fast

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in sorted(drop_per_class(metrics).items()):
        shown = f"{100 * v:.2f}" if ("iou" in k or "acc" in k) else f"{v:g}"
        table.add_row(k, shown)
    console.print(table)


@app.command()
def train(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
          resume: Optional[str] = typer.Option(None, help="'auto' (the run dir's last.pt) or a checkpoint path."),
          seed: Optional[int] = typer.Option(None, help="run.seed: networks, latents and batches."),
          track: bool = TrackOpt, experiment: Optional[str] = ExperimentOpt):
    """Train an annotator (LAGM) or a baseline from a config."""
    from .methods import load_config  # torch, every method
    from .runs import run_dir_of, train_one

    cfg = load_config(config, with_options(set_, seed, experiment))
    try:
        result = train_one(cfg, resume=resume, track=track)
    except KeyboardInterrupt:
        last = run_dir_of(cfg) / "last.pt"
        where = f"its last checkpoint is {last}; continue with --resume auto" if last.exists() else "no checkpoint yet"
        typer.echo(f"interrupted: {where}", err=True)
        raise typer.Exit(130)
    print_metrics(f"{cfg.run.name}: test metrics at the best validation step ({result.best_step})", result.metrics)


@app.command()
def evaluate(checkpoint: Path = typer.Argument(..., help="best.pt or last.pt of a run"),
             config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
             downstream: bool = typer.Option(False, help="Also run Table 1's downstream protocol."),
             track: bool = TrackOpt, experiment: Optional[str] = ExperimentOpt):
    """Evaluate a trained segmentor (and annotator) on the test split."""
    from .runs import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, config, with_options(set_, None, experiment), downstream=downstream,
                                  track=track)
    print_metrics(f"evaluation of {checkpoint}", metrics)


RECIPE = "Default: the category's recipe (lagm_ray/generator_training.py: CATEGORY_RECIPES, GeneratorTrainConfig)."


@app.command("train-generator")
def train_generator_cmd(category: str = typer.Option("faces", help="Embedded world category."),
                        resolution: int = typer.Option(64),
                        steps: Optional[int] = typer.Option(None, help=RECIPE),
                        batch_size: Optional[int] = typer.Option(None, help=RECIPE),
                        lr: Optional[float] = typer.Option(None, help="Adam's peak rate. " + RECIPE),
                        part_weighting: Optional[float] = typer.Option(
                            None, help="Weigh each part's pixels by its pixel share ** -this (0: plain L1). " + RECIPE),
                        seed: int = typer.Option(0),
                        out: Optional[Path] = typer.Option(None, help="Default: the shipped asset path."),
                        track: bool = TrackOpt,
                        experiment: str = typer.Option("lagm-generators", "--experiment", help="MLflow experiment.")):
    """Train the embedded world's toy StyleGAN2 by distilling the renderer."""
    from .generator_training import recipe
    from .runs import train_toy_generator

    # options left unset take the category's recipe
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "part_weighting": part_weighting}
    c = recipe(category, resolution=resolution, seed=seed, **{k: v for k, v in given.items() if v is not None})
    train_toy_generator(c, out, track=track, experiment=experiment)


@app.command("import-generator")
def import_generator_cmd(pkl: Path = typer.Argument(..., help="An NVlabs stylegan2-ada-pytorch network pickle."),
                         out: Path = typer.Option(..., "--out", "-o", help="The generator checkpoint (.pt) to write."),
                         category: Optional[str] = typer.Option(None, help="Category name stored in the meta."),
                         class_names: Optional[str] = typer.Option(
                             None, help="Comma-separated part classes, background first, e.g. bg,eye,mouth.")):
    """Convert an NVlabs network pickle's G_ema to a lagm_ray generator checkpoint, without running any
    code from the pickle (only whitelisted tensor and container types are read)."""
    from .storage import save_checkpoint
    from .synthetic import import_nvlabs_checkpoint

    names = [n.strip() for n in class_names.split(",") if n.strip()] if class_names else None
    ckpt = import_nvlabs_checkpoint(pkl, category=category, class_names=names)
    save_checkpoint(ckpt, out)
    kw = ckpt["init_kwargs"]
    console.print(f"wrote {out}: {kw['img_resolution']} px StyleGAN2, z_dim {kw['z_dim']}, "
                  f"{len(ckpt['state_dict'])} tensors from {pkl}")


@app.command()
def render(category: str = typer.Option("faces"), n: int = typer.Option(8), resolution: int = typer.Option(64),
           out: Path = typer.Option(Path("world.png")), generated: bool = typer.Option(
               True, help="Also show the toy generator's samples beside the renders."),
           generator: Optional[str] = typer.Option(
               None, help="A toy generator checkpoint of this category. Default: the shipped one.")):
    """Picture grid of the embedded world: renders, generated images and their true masks."""
    from .world_preview import world_grid

    try:
        image = world_grid(category, n, resolution, generated=generated, generator=generator)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    from .viz import save_png

    save_png(image, out)
    console.print(f"wrote {out}")


@app.command()
def quickstart(quick: bool = typer.Option(False, help="A much shorter budget (smoke test)."),
               seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
               out: Path = typer.Option(Path("quickstart_results.json")),
               track: bool = TrackOpt,
               parallel: int = typer.Option(2, help="Trainings at a time, one torch thread each "
                                                     "(1: one after another with the config's threads)."),
               set_: Optional[list[str]] = SetOpt):
    """LAGM vs supervised-only with 2 and 10 labels on the embedded faces; prints a table."""
    from .config import parse_override
    from .quickstart import run_quickstart

    extra = dict(parse_override(o) for o in set_ or [])
    run_quickstart(quick=quick, seeds=parse_seeds(seeds), out=out, track=track, extra=extra, parallel=parallel)


@app.command()
def sweep(spec: Path = typer.Argument(..., help="A search_spaces/ YAML file."),
          quick: bool = typer.Option(False, "--quick", help="The file's quick: budget (minutes on 2 CPUs)."),
          steps: Optional[int] = typer.Option(None, help="train.steps for every trial."),
          trials: Optional[int] = typer.Option(None, help="num_samples (grid: repeats of the grid)."),
          concurrency: Optional[int] = typer.Option(None, help="max_concurrent_trials."),
          set_: Optional[list[str]] = SetOpt,
          name: Optional[str] = typer.Option(None, help="Sweep name (default: the file's, with -quick for --quick)."),
          storage_path: Optional[str] = typer.Option(None, help="Tune state and checkpoints: a folder, NFS path or "
                                                                  "s3:// (default $LAGM_STORAGE_PATH or ./ray_results)."),
          resume: bool = typer.Option(False, "--resume", help="Finish the sweep of this name in the storage (Ray "
                                                              "unpickles its state: only from storage that only "
                                                              "trusted users can write)."),
          track: bool = TrackOpt,
          experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: one "
                                                   "named after the sweep, e.g. ablation_k-quick)."),
          verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines in the terminal.")):
    """Run a Ray Tune sweep (or, with --resume, finish one); the experiments/ scripts take the same flags.
    Exits 1 when a trial failed, naming each with its reason."""
    import argparse

    from .sweep_command import exit_status, run, spec_from_args

    args = argparse.Namespace(quick=quick, steps=steps, trials=trials, concurrency=concurrency, overrides=set_ or [],
                              name=name, storage_path=storage_path, resume=resume, track=track, experiment=experiment,
                              verbose=verbose)
    try:
        results, _ = run(spec_from_args(spec, args), args)
    except KeyboardInterrupt:  # the parent and running trials are KILLED in MLflow
        typer.echo("interrupted: continue with --resume", err=True)
        raise typer.Exit(130)
    raise typer.Exit(exit_status(results))


@app.command()
def report(sweep_name: str = typer.Argument(..., metavar="SWEEP", help="A sweep name or its parent run id."),
           experiment: Optional[str] = typer.Option(None, help="MLflow experiment (default: search all)."),
           out: Path = typer.Option(Path("."), help="Directory for summary.csv, summary.md, summary.png."),
           log: bool = typer.Option(True, help="Also log the summary to the sweep's parent run.")):
    """The summary table and plot of a finished or running sweep, from MLflow."""
    from .report import write_report
    from .tracking import find_sweep_run

    try:
        parent = find_sweep_run(sweep_name, experiment, None)
    except LookupError as e:
        fail(str(e))
    paths = write_report(parent, None, out_dir=out, log=log)
    console.print(paths["markdown"].read_text())
    console.print("wrote " + ", ".join(str(p) for p in paths.values() if p.exists()))


@app.command()
def generate(annotator: Path = typer.Option(..., "--annotator",
                                            help="A LAGM run directory (its best.pt) or a checkpoint."),
             num_images: int = typer.Option(..., "--num-images", help="Images to generate (before any filtering)."),
             out: Path = typer.Option(..., "--out", help="Directory of parquet shards (shared storage on a cluster)."),
             shard_size: int = typer.Option(500, help="Images per shard."),
             batch_size: int = typer.Option(16, help="Generator batch; part of the dataset's identity (rounding)."),
             concurrency: Optional[int] = typer.Option(None, help="Actors (default: one per GPU, else per CPU)."),
             cpus_per_actor: float = typer.Option(1.0, help="CPUs (and torch threads) per actor."),
             gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="A GPU per actor (default: if any)."),
             seed: int = typer.Option(0, help="Image i of the dataset has seed SEED + i."),
             truncation: Optional[float] = typer.Option(None, help="Truncation psi (default: the annotator run's)."),
             min_confidence: Optional[float] = typer.Option(None, help="Drop images whose confidence is below."),
             max_entropy: Optional[float] = typer.Option(None, help="Drop images whose mean entropy is above."),
             local: bool = typer.Option(False, "--local", help="Generate in this process, without Ray."),
             track: bool = TrackOpt,
             experiment: str = typer.Option("lagm-datasets", "--experiment", help="MLflow experiment."),
             verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines in the terminal.")):
    """Generate a labelled synthetic dataset (parquet shards + .manifest.json) with a learned annotator.
    Re-running the same command after an interruption writes only the missing shards."""
    from .datagen import GenerationSpec
    from .runs import generate_and_log

    spec = GenerationSpec(num_images=num_images, shard_size=shard_size, seed=seed, batch_size=batch_size,
                          truncation_psi=truncation, min_confidence=min_confidence, max_entropy=max_entropy)
    generate_and_log(annotator, out, spec, local=local, concurrency=concurrency, cpus_per_actor=cpus_per_actor,
                     use_gpu=gpu, track=track, experiment=experiment, verbose=verbose)


@app.command()
def downstream(shards: Path = typer.Argument(..., help="A `lagm generate` output directory."),
               config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                     help="Config (default: the annotator run's, from the manifest)."),
               set_: Optional[list[str]] = SetOpt,
               ray: bool = typer.Option(False, "--ray", help="Read the shards through Ray Data."),
               track: bool = TrackOpt, experiment: Optional[str] = ExperimentOpt):
    """Table 1's downstream protocol on a shard directory: a fresh segmentor trained on the shards alone,
    scored on the config's real test split at its best validation epoch."""
    from .annotator_runs import downstream_config
    from .config import parse_override
    from .datagen import open_dataset
    from .methods import load_config  # torch, every method
    from .runs import log_command_run

    overrides = with_options(set_, None, experiment)
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        cfg = downstream_config(open_dataset(shards, checksums=False))
        if overrides:
            cfg = cfg.replace(dict(parse_override(o) for o in overrides), source="--set")
    if ray:
        from .distributed.generate import downstream_from_shards
    else:
        from .downstream import downstream_from_shards
    metrics = downstream_from_shards(shards, cfg)
    if track and cfg.tracking.enabled:
        log_command_run(cfg, f"downstream-{shards.name}", metrics, {"shards": str(shards.resolve())})
    print_metrics(f"downstream segmentor trained on {shards}", metrics)


config_app = typer.Typer(help="The config: resolved, or its schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Print the resolved config (defaults, then the file, then --set) as YAML, checked as `lagm train` would."""
    from .methods import load_config

    typer.echo(load_config(config, set_ or []).to_yaml(), nl=False)


@config_app.command("schema")
def config_schema():
    """Print the config's JSON schema (every section, key, type, default and bound)."""
    import json

    from pydantic import TypeAdapter

    from .methods import Config

    typer.echo(json.dumps(TypeAdapter(Config).json_schema(), indent=2))


data_app = typer.Typer(help="Real datasets in their release layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(root: Path = typer.Argument(..., help="The dataset's root folder, as downloaded."),
               dataset: str = typer.Option(..., "--dataset", "-d", help="e.g. celebamask-hq"),
               limit: Optional[int] = typer.Option(None, min=1, help="Check only the first N images of each split."),
               out: Path = typer.Option(Path("."), "--out", help="Directory for the picture check_<dataset>.png.")):
    """Validate a dataset folder (missing or corrupt files, unknown mask values, image/mask sizes),
    print its class frequencies, and draw images beside their masks. Exits 1 listing the first problems."""
    from .data.check import problem_lines, run_check, summary_table, write_picture

    console.print(f"checking {root} as {dataset}" + (f" (first {limit} images of each split)" if limit else ""))
    report = run_check(root, dataset, limit)
    console.print(summary_table(report))
    picture = write_picture(report, out)
    if picture is not None:
        console.print(f"wrote {picture}", soft_wrap=True)
    # plain lines (no rich wrapping or markup): the first problems, one per line starting with the file,
    # how many more, and the summary line last
    for line in problem_lines(report):
        typer.echo(line)
    if report.problems:
        raise typer.Exit(1)
    console.print(f"[green]ok:[/] {report.num_checked} images, no problems")


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``lagm ARGV`` and return its exit status: 0 done, 1 finished with problems (a failed trial, a
    dataset with bad files), 2 a user error (one line on stderr), 130 interrupted."""
    _debug["on"] = False
    try:
        code = app(args=argv, prog_name="lagm", standalone_mode=False)
    except typer.TyperException as e:  # a bad flag or argument: the usage message (no args: the help)
        e.show()
        return getattr(e, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except USER_ERRORS as e:
        if _debug["on"] or os.environ.get(DEBUG_ENV):
            raise
        typer.echo(f"error: {one_line(e)}", err=True)
        return 2
    return code if isinstance(code, int) else 0


def entry_point() -> None:  # pragma: no cover - the `lagm` console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry_point()
