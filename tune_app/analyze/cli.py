"""The command line of ``python -m tune_app.analyze`` and its Python form ``tune_app.analyze(run_dir)``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tune_app.analyze.build import Analysis, compute
from tune_app.analyze.outputs import console_summary, log_wandb, write
from tune_app.analyze.selection import RULES
from tune_app.errors import OneLineParser, Renamed, UsageError, one_line
from tune_app.results import Sweep
from tune_app.rundir.lock import check_idle, check_writable

DESCRIPTION = ("Analyze a sweep: python -m tune_app.analyze runs/<name>; compare two sweeps of one space: "
               "python -m tune_app.analyze runs/<a> runs/<b>.")
COMPARE_FLAGS = "--metric, --mode, --at-epoch, --select and --out"


def build_parser(prog: str = "python -m tune_app.analyze") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=DESCRIPTION)
    p.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                   help="a sweep's run directory, e.g. runs/<name>, or its s3:// / gs:// URI; two: compare them")
    p.add_argument("--metric", help="metric to analyze (default: the sweep's; val_acc for a plain Ray experiment)")
    p.add_argument("--mode", choices=("max", "min"), help="whether the metric is maximised or minimised")
    p.add_argument("--at-epoch", type=int, metavar="K",
                   help="compare trials at epoch K (default: the deepest epoch a third of the trials reached)")
    p.add_argument("--pair", action="append", default=[], metavar="A,B",
                   help="also tabulate two hyperparameters against each other (repeatable)")
    p.add_argument("--curves-by", action="append", default=[], metavar="NAME",
                   help="learning curves grouped by this hyperparameter's values (repeatable; default: the space's "
                        "CURVES_BY, e.g. loss for study 3)")
    p.add_argument("--select", choices=RULES, default="last",
                   help="how the best trial is chosen: its last epoch (default), its best epoch, or at --at-epoch")
    p.add_argument("--top-configs", "--top-k", dest="top_k", type=int, default=5, action=Renamed, metavar="K",
                   help="how many of the best configurations topk.json lists (default 5)")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="log a summary run to the sweep's W&B group (default: as the sweep did; "
                        "disabled for a plain Ray experiment)")
    p.add_argument("--wandb-project", help="default: the sweep's project")
    p.add_argument("--wandb-entity")
    p.add_argument("--out", metavar="DIR",
                   help="with two run directories: the comparison's folder (default: <parent of the second>/"
                        "compare-<first>-vs-<second>)")
    return p



def run(path, *, metric=None, mode=None, at_epoch=None, pairs=(), select="last", top_k=5, curves_by=(),
        wandb_mode=None, wandb_project=None, wandb_entity=None, quiet=False) -> Analysis:
    a = compute(path, metric=metric, mode=mode, at_epoch=at_epoch, pairs=pairs, select=select, top_k=top_k,
                curves_by=curves_by)
    check_writable(a.sweep.path, "analyze", "its summary/")
    write(a)
    log_wandb(a, wandb_mode, wandb_project, wandb_entity)
    if not quiet:
        print(console_summary(a), flush=True)
    if a.best.get("config") is None:
        failed = sum(a.best["trials"].get(k, 0) for k in ("error", "oom", "timeout"))
        raise UsageError(f"{a.sweep.path}: {a.best['reason']} ({failed} failed, "
                         f"{a.best['trials']['diverged']} diverged; the error column of summary/trials.parquet "
                         f"says why)")
    return a



def main(argv: list[str] | None = None, prog: str = "python -m tune_app.analyze") -> int:
    args = build_parser(prog).parse_args(argv)
    if len(args.run_dir) == 1 and args.out is None:
        args.run_dir = args.run_dir[0]
        return one_line(_analyze, args)
    return one_line(_compare, args)



def _analyze(args) -> int:
    from tune_app.cluster import storage

    path = storage.materialize(args.run_dir, "analyze")  # an s3:// or gs:// run comes down first
    check_idle(path, "analyze")
    run(path, metric=args.metric, mode=args.mode, at_epoch=args.at_epoch, pairs=args.pair,
        select=args.select, top_k=args.top_k, curves_by=args.curves_by, wandb_mode=args.wandb_mode,
        wandb_project=args.wandb_project, wandb_entity=args.wandb_entity)
    if storage.is_uri(args.run_dir) and storage.check_scheme(args.run_dir, "analyze") != "file":
        storage.upload(path, args.run_dir, ("summary",))
        print(f"tune_app: summary written to {args.run_dir.rstrip('/')}/summary", flush=True)
    return 0



def _compare(args) -> int:
    """Two run directories: tune_app.analyze.compare (its module says what it writes)."""
    from tune_app.analyze import compare
    from tune_app.cluster import storage

    if len(args.run_dir) == 1:
        raise UsageError(f"--out {args.out}: names the folder a comparison of two run directories is written to; "
                         f"the analysis of one goes to its summary/")
    if len(args.run_dir) > 2:
        raise UsageError(f"{len(args.run_dir)} run directories ({', '.join(args.run_dir)}): give one to analyze, "
                         f"or two to compare")
    single = {"--pair": args.pair, "--curves-by": args.curves_by, "--top-configs": args.top_k != 5,
              "--wandb-mode": args.wandb_mode, "--wandb-project": args.wandb_project,
              "--wandb-entity": args.wandb_entity}
    for flag, given in single.items():
        if given:
            raise UsageError(f"{flag} is for the analysis of one run directory; a comparison of two takes "
                             f"{COMPARE_FLAGS}")
    remote = [storage.is_uri(d) and storage.check_scheme(d, "analyze") != "file" for d in args.run_dir]
    if args.run_dir[0].rstrip("/") == args.run_dir[1].rstrip("/"):
        raise UsageError(f"{args.run_dir[0]} is given twice; compare two different run directories")
    run_a, run_b = (storage.materialize(d, "analyze") for d in args.run_dir)  # an s3:// or gs:// run comes down
    out = args.out
    if out is None and remote[1]:  # no parent folder of the second to write beside: the current directory
        out = Path.cwd() / compare.default_out(*args.run_dir).name
    compare.call(run_a, run_b, metric=args.metric, mode=args.mode, at_epoch=args.at_epoch, select=args.select,
                 out=out)
    return 0



def call(run_dir, **options) -> Sweep:
    """Analyze a run directory again (``metric``, ``mode``, ``at_epoch``, ``select``, ``top_k``, ``pairs``,
    ``curves_by``, ``wandb_mode`` as the command line's flags); returns its results."""
    known = ("metric", "mode", "at_epoch", "pairs", "select", "top_k", "curves_by", "wandb_mode", "wandb_project",
             "wandb_entity", "quiet")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(known)}")
    path = Path(run_dir).expanduser().resolve()
    check_idle(path, "analyze")
    run(path, **options)
    return Sweep(path)
