"""``python -m tune_app.search``: the command line, as a thin layer over the typed settings
(tune_app.settings.SweepSettings) that the Python API takes too."""
from __future__ import annotations

import argparse
import dataclasses

from tune_app.errors import OneLineParser, Renamed, one_line
from tune_app.search.algorithms import SCHEDULERS, SEARCHERS
from tune_app.search.plan import TRANSFER_TOP_K, spec_of
from tune_app.search.runner import run
from tune_app.settings import SweepSettings
from tune_app.spaces import list_spaces


def gpus_arg(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number such as 0.25, or auto") from None


def build_parser(prog: str = "python -m tune_app.search") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Run a hyperparameter search: python -m tune_app.search --space digits")
    p.add_argument("--space", help="search space module in search_spaces/ (see --list-spaces), a .py file, or a W&B "
                                   "sweep .yaml file")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--plan", action="store_true",
                   help="print each configuration's parameters, estimated memory and time (measured by a short "
                        "probe) and the total, then exit without training")
    p.add_argument("--gpus", metavar="N[,N...]",
                   help="with --plan: also project the sweep's wall time on a cluster of N GPUs (several: 1,4), "
                        "each trial holding --gpus-per-trial of one, at the probed epoch times")
    p.add_argument("--export-wandb-sweep", metavar="FILE",
                   help="write the space (after --set), with its searcher, scheduler and number of trials, as a W&B "
                        "sweep YAML file and exit without training; --space FILE runs it again")
    p.add_argument("--searcher", choices=SEARCHERS.names(), help="default: the space's SETTINGS, else optuna")
    p.add_argument("--scheduler", choices=SCHEDULERS.names(), help="default: the space's SETTINGS, else fifo")
    p.add_argument("--num-samples", type=int,
                   help="trials to run (grid: repeats of the grid); default: the space's SETTINGS, else 10")
    p.add_argument("--max-epochs", type=int, help="epochs cap per trial; the schedulers' max_t")
    p.add_argument("--metric", help="what ranks trials (default: the space's METRIC); several, comma-separated, "
                                    "for a multi-objective sweep: --metric val_acc,params --mode max,min")
    p.add_argument("--mode", help="max or min, one per --metric (default: the space's MODE)")
    p.add_argument("--repeats", type=int, metavar="K",
                   help="train each configuration K times, with seeds seed, seed+1, ..., in one trial that reports "
                        "their mean to the searcher and the schedulers; trials.parquet gets one row per run "
                        "(default 1)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=gpus_arg,
                   help="fractions such as 0.25 pack trials per GPU; auto measures each configuration's peak GPU "
                        "memory in a short probe and packs by it (CPU trials where the cluster has no GPU)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int,
                   help="retry a crashed trial this many times, each from its last checkpoint (default 2)")
    p.add_argument("--keep-checkpoints", type=int,
                   help="checkpoints kept per trial: the best N by the metric, and always the latest (default 2)")
    p.add_argument("--checkpoint-every-s", type=float,
                   help="seconds of training between a trial's checkpoints; a trial also checkpoints at its "
                        "scheduler's decision epochs and its last epoch (default 30; 0 = every epoch)")
    p.add_argument("--trial-timeout", type=float,
                   help="stop a trial that reports nothing for this many seconds (status timeout; retried as a "
                        "crash is); default 0 = never")
    p.add_argument("--budget-hours", type=float,
                   help="start no new trial once the sweep has spent this many device-hours (wall time x the GPUs "
                        "each trial holds, or its CPUs without GPUs); running trials finish. Default 0 = no budget")
    p.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=None,
                   help="train the next trial in a finished trial's worker process (default on; --no-reuse-actors "
                        "starts a fresh process per trial)")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: run the trials that ended in error again, from their last checkpoint")
    p.add_argument("--address", help="Ray cluster to join: auto, or ray://host:10001 (default: start a local Ray)")
    p.add_argument("--storage-path", default="./runs",
                   help="where run directories go: a directory (shared by all machines for a multi-node run), "
                        "s3://bucket/path or gs://bucket/path (default ./runs)")
    p.add_argument("--name", help="run directory name (default <space>-<date>-<time>)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                   help="continue an interrupted sweep: a run directory or its s3:// / gs:// URI, or the one "
                        "--name names")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space entry; a list (key=[a,b]) becomes a searched choice")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="begin with the top configurations of this finished sweep (same trainable), restricted "
                        "to the keys this space searches")
    p.add_argument("--from-top", "--top-k", dest="top_k", type=int, action=Renamed, metavar="K",
                   help=f"how many of --from-run's best configurations to begin with (default {TRANSFER_TOP_K}); "
                        f"--num-samples defaults to it")
    p.add_argument("--data-dir", default="./data", help="dataset files (default ./data)")
    p.add_argument("--seed", type=int,
                   help="searcher seed, and the trials' seed where the space sets none (default 0)")
    p.add_argument("--wandb-project", default="tune_app")
    p.add_argument("--wandb-entity")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="default: online with an API key, offline without")
    return p


def settings_of(args: argparse.Namespace) -> SweepSettings:
    """The command line's settings as the typed object the Python API takes."""
    from tune_app.spaces import parse_overrides

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SweepSettings)
             if f.name not in ("set", "resume") and hasattr(args, f.name)}
    return SweepSettings(**given, set=parse_overrides(args.overrides), resume=args.resume or False)


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.search") -> int:
    args = build_parser(prog).parse_args(argv)
    return one_line(_search, args)


def _search(args) -> int:
    if args.list_spaces:
        from tune_app.spaces import load_space

        for name in list_spaces():
            doc = (load_space(name).module.__doc__ or "").strip().splitlines()
            print(f"{name:20s} {doc[0] if doc else ''}")
        return 0
    settings = settings_of(args)
    if settings.export_wandb_sweep:
        from tune_app.search.export import export_wandb_sweep

        path = export_wandb_sweep(settings)
        print(f"tune_app: wrote the W&B sweep {path}; run it with python -m tune_app.search --space {path}")
        return 0
    return run(spec_of(settings), resume=bool(settings.resume))
