"""Retrain a sweep's best configurations and measure them on the test set:
``python -m tune_app.retrain runs/<name>``'s command line (``build_parser``, ``main``), ``run``, which does the
retrain's steps in order, and ``call``, the Python API's ``tune_app.retrain(run_dir, ...)``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tune_app.errors import OneLineParser, Renamed, UsageError, one_line
from tune_app.report.documents import retrain_console
from tune_app.retrain import own
from tune_app.retrain.files import model_payload, read_predict, refresh_report, write_files
from tune_app.retrain.model import load_model
from tune_app.retrain.plan import Plan, make_plan
from tune_app.retrain.results import summarize
from tune_app.retrain.tasks import check_ood, load_dataset, run_all
from tune_app.retrain.wandb_runs import log_wandb
from tune_app.rundir.layout import RETRAIN_DIR


def build_parser(prog: str = "python -m tune_app.retrain") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a sweep's run directory, e.g. runs/<name>, or its s3:// / gs:// URI")
    p.add_argument("--configs", "--top-k", dest="top_k", type=int, default=None, action=Renamed, metavar="K",
                   help="retrain the K best configurations (default: those within noise of the best, at most 3: "
                        "where the test set has something to decide)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3,
                       help="seeds per configuration: the trial's own seed and the next ones (default 3)")
    seeds.add_argument("--seed-list", help="explicit seeds, e.g. 1,2,3")
    p.add_argument("--epochs", type=int, help="train this many epochs; schedules scale with it (default: as the "
                                              "trial was configured)")
    p.add_argument("--train-on", choices=("train", "train+val"), default="train",
                   help="train+val folds the validation split back into training")
    p.add_argument("--address", help="Ray cluster to run the seeds on (default: the sweep's; a local Ray if none)")
    p.add_argument("--cpus-per-trial", type=float, help="per retrain (default: the sweep's)")
    p.add_argument("--gpus-per-trial", type=float, help="per retrain (default: the sweep's)")
    p.add_argument("--data-dir", help="dataset files (default: the sweep's)")
    p.add_argument("--predict", metavar="PATH",
                   help="also write submission.csv (id,label) for these images: a folder of image files or a .npy")
    p.add_argument("--corruptions", help="score every model on corrupted test images: 'all' or a comma list "
                                         "(default: the trial's ood_corruptions; all for an ood_acc sweep)")
    p.add_argument("--severities", help="corruption severities, e.g. 1-5 or 1,3,5 (default: the trial's)")
    p.add_argument("--corruption-dir", metavar="DIR",
                   help="read the corrupted test set from CIFAR-10-C/100-C .npy files instead of generating it")
    p.add_argument("--evaluate", metavar="MODEL_FILE",
                   help="train nothing: evaluate a model file on the sweep's test set and print the numbers")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), help="default: as the sweep did")
    p.add_argument("--wandb-project", help="default: the sweep's")
    p.add_argument("--wandb-entity")
    return p


def evaluate_file(plan: Plan, path: str) -> None:
    """--evaluate: a model file's numbers on the sweep's test set; writes nothing."""
    dataset = load_dataset(plan)
    try:
        model = load_model(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    meta = model.data
    if (tuple(meta["input_shape"]), meta["num_classes"]) != (dataset.input_shape, dataset.num_classes):
        raise UsageError(f"{path}: the model takes {tuple(meta['input_shape'])} images in {meta['num_classes']} "
                         f"classes, the sweep's {dataset.name} has {dataset.input_shape} in {dataset.num_classes}")
    loss, acc = model.evaluate(dataset.x_test, dataset.y_test)
    print(f"{path}: {model.payload['trainable']} {model.trainable.run_name(model.config)} on the {dataset.name} test "
          f"set ({len(dataset.y_test)} images): accuracy {100 * acc:.2f} %, loss {loss:.4f}")


def run(args: argparse.Namespace) -> Path | None:
    """Retrain as ``args`` (the command line's) say; the retrain folder (None for --evaluate). Raises UsageError."""
    from tune_app.cluster import storage

    uri = args.run_dir if storage.is_uri(args.run_dir) and \
        storage.check_scheme(args.run_dir, "retrain") != "file" else None
    args.run_dir = str(storage.materialize(args.run_dir, "retrain"))  # an s3:// run comes down first
    from tune_app.rundir.lock import check_idle, check_writable

    check_idle(args.run_dir, "retrain")
    plan = make_plan(args)
    if not args.evaluate:
        check_writable(plan.run_dir, "retrain", "its retrain/ folder")
    if args.evaluate:
        evaluate_file(plan, args.evaluate)
        return None
    if not plan.trainable.builtin:
        out = own.run(plan)
    else:
        out = run_builtin(plan)
    if uri:
        storage.upload(plan.run_dir, uri, ("summary", RETRAIN_DIR))
    return out


def run_builtin(plan: Plan) -> Path:
    dataset = load_dataset(plan)
    check_ood(plan, dataset)
    to_predict = read_predict(plan, dataset)
    from tune_app.cluster.session import join_ray

    started = join_ray(plan.settings, plan.sweep.spec.get("code"))
    try:
        runs = sum(len(c.seeds) for c in plan.candidates)
        print(f"tune_app: retraining {len(plan.candidates)} configuration(s) of {plan.sweep.name} x "
              f"{len(plan.candidates[0].seeds)} seeds = {runs} runs on {plan.train_on} "
              f"({plan.settings['cpus_per_trial']:g} CPU / {shown(plan.settings['gpus_per_trial'])} GPU each), "
              f"then the test set ({len(dataset.y_test)} images); configurations: {plan.chosen}", flush=True)
        run_all(plan, dataset)
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = summarize(plan, dataset)
    out = write_files(plan, dataset, summary, model_payload(plan, dataset, summary), to_predict)
    log_wandb(plan, summary, out)
    refresh_report(plan)
    print(retrain_console(summary))
    extra = "".join(f", {f}" for f in ("robustness.csv", "submission.csv") if (out / f).exists())
    print(f"Retrain: {out} (retrain.json, model.pt, confusion_matrix.png/.csv, per_class.csv, samples.png{extra}); "
          f"report: {plan.run_dir / 'summary' / 'report.html'}")
    return out


def shown(gpus) -> str:
    return gpus if isinstance(gpus, str) else f"{gpus:g}"


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.retrain") -> int:
    args = build_parser(prog).parse_args(argv)

    def retrain() -> int:
        run(args)
        return 0

    return one_line(retrain)


def call(run_dir, seeds: int = 3, **options) -> dict:
    """Retrain the sweep's best configuration with ``seeds`` seeds and measure it on the test set; returns
    retrain.json (per configuration and seed: validation and test metrics). Options are the command line's:
    ``top_k``, ``seed_list``, ``epochs``, ``train_on``, ``cpus_per_trial``, ``gpus_per_trial``, ``wandb_mode``..."""
    args = build_parser().parse_args([str(run_dir)])
    unknown = sorted(set(options) - set(vars(args)) - {"seeds"})
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(vars(args)))}")
    if options.get("train_on", "train") not in ("train", "train+val"):
        raise UsageError(f"train_on={options['train_on']!r}: use 'train' or 'train+val'")
    if options.get("evaluate") is not None:
        raise UsageError("evaluate= trains nothing; measure a model file with tune_app.load_model(path).evaluate("
                         "images, labels)")
    if isinstance(options.get("seed_list"), (list, tuple)):
        options["seed_list"] = ",".join(str(seed) for seed in options["seed_list"])
    namespace = argparse.Namespace(**{**vars(args), **options, "seeds": seeds})
    out = run(namespace)
    return json.loads((out / "retrain.json").read_text())
