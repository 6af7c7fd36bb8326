"""Train one configuration once: ``python -m tune_app.train``.

With no arguments it trains the NumPy MLP (study 3) on Fashion-MNIST with the default
configuration below. The flags are study 3's, short and long. ``--trainable
image_classifier --set key=value ...`` trains any configuration of the PyTorch
trainable the same way. Metrics go to the console, to ``<out>/history.csv`` and to W&B
(offline when no API key is configured); the final state goes to ``<out>/state.pkl``.
"""
from __future__ import annotations

import csv
import pickle
import sys
import time
from pathlib import Path

from tune_app.errors import OneLineParser, UsageError, one_line

# Study 3's best configuration: Nadam, 2 hidden layers of 2048 and 1024 units, tanh, Xavier (90.21 %
# validation on Fashion-MNIST). Its other values were not published; these are the trainable's defaults.
DEFAULTS = {"dataset": "fashion_mnist", "epochs": 10, "batch_size": 64, "loss": "cross_entropy",
            "optimizer": "nadam", "learning_rate": 1e-3, "momentum": 0.9, "beta": 0.9, "beta1": 0.9,
            "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.0, "weight_init": "Xavier", "num_layers": 2,
            "hidden_size": [2048, 1024], "activation": "tanh"}
# study 3's flag -> numpy_mlp's config key
KEYS = {"learning_rate": "lr"}


def _choice(choices):
    """argparse type: case-insensitive match against study 3's spelling of the choices."""
    lookup = {c.lower(): c for c in choices}

    def parse(text: str) -> str:
        return lookup.get(text.lower(), text)
    return parse


def build_parser(prog: str = "python -m tune_app.train") -> OneLineParser:
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    d = DEFAULTS
    flag = p.add_argument
    flag("-wp", "--wandb_project", default="tune_app", help="W&B project")
    flag("-we", "--wandb_entity", default=None, help="W&B entity")
    flag("-d", "--dataset", choices=["mnist", "fashion_mnist"], default=d["dataset"])
    flag("-e", "--epochs", type=int, default=d["epochs"])
    flag("-b", "--batch_size", type=int, default=d["batch_size"])
    losses = ["mean_squared_error", "cross_entropy"]
    flag("-l", "--loss", type=_choice(losses), choices=losses, default=d["loss"])
    optimizers = ["sgd", "momentum", "nag", "rmsprop", "adam", "nadam"]
    flag("-o", "--optimizer", type=_choice(optimizers), choices=optimizers, default=d["optimizer"])
    flag("-lr", "--learning_rate", type=float, default=d["learning_rate"])
    flag("-m", "--momentum", type=float, default=d["momentum"], help="momentum and nag")
    flag("-beta", "--beta", type=float, default=d["beta"], help="rmsprop")
    flag("-beta1", "--beta1", type=float, default=d["beta1"], help="adam and nadam")
    flag("-beta2", "--beta2", type=float, default=d["beta2"], help="adam and nadam")
    flag("-eps", "--epsilon", type=float, default=d["epsilon"])
    flag("-w_d", "--weight_decay", type=float, default=d["weight_decay"])
    inits = ["random", "Xavier", "He"]
    flag("-w_i", "--weight_init", type=_choice(inits), choices=inits, default=d["weight_init"])
    flag("-nhl", "--num_layers", type=int, help=f"hidden layers (default {d['num_layers']}, or as many as -sz "
                                                   f"lists)")
    flag("-sz", "--hidden_size", type=int, nargs="+", metavar="UNITS",
         help=f"units per hidden layer: one width for all, or one per layer (default "
              f"{' '.join(map(str, d['hidden_size']))}; with -nhl alone, {d['hidden_size'][-1]} each)")
    activations = ["identity", "sigmoid", "tanh", "ReLU"]
    flag("-a", "--activation", type=_choice(activations), choices=activations, default=d["activation"])
    p.add_argument("--trainable", default="numpy_mlp", help="numpy_mlp (default) or image_classifier")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any key of the trainable (the only way to configure image_classifier)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="./data", help="dataset files (default ./data)")
    p.add_argument("--out", help="output folder (default runs/train-<run name>-<date>-<time>)")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="default: online with an API key, offline without")
    return p


def config_of(args, trainable) -> dict:
    """The trainable's config: study 3's flags (numpy_mlp only), then --set, checked against PARAMS."""
    from trainables.params import resolve
    from tune_app.spaces import parse_overrides

    config = {"seed": args.seed}
    if args.trainable == "numpy_mlp":
        config.update({KEYS.get(k, k): getattr(args, k) for k in DEFAULTS})
        config.update({k: str(config[k]).lower() for k in ("weight_init", "activation")})
        config.update(architecture(args.num_layers, args.hidden_size))
    overrides = parse_overrides(args.overrides)
    if any(isinstance(v, list) for v in overrides.values()):
        raise UsageError("--set takes one value per key here (a list searches; use tune_app.search for that)")
    config.update(overrides)
    try:
        config = resolve(trainable.PARAMS, config)
        if hasattr(trainable, "widths"):
            trainable.widths(config["num_layers"], config["hidden_size"])
        return config
    except (ValueError, KeyError) as e:
        raise UsageError(str(e).strip().splitlines()[0]) from None


def architecture(num_layers: int | None, sizes: list[int] | None) -> dict:
    """-nhl and -sz as config keys: several -sz widths are one per layer (and set the depth); one width is
    shared by every layer. Neither given: study 3's best, 2048 then 1024."""
    if sizes is None:
        default = DEFAULTS["hidden_size"]
        sizes = default if num_layers in (None, len(default)) else default[-1:]
    if num_layers is None:
        num_layers = len(sizes) if len(sizes) > 1 else DEFAULTS["num_layers"]
    return {"num_layers": num_layers, "hidden_size": sizes[0] if len(sizes) == 1 else list(sizes)}


class RunReporter:
    """Prints each epoch, appends it to history.csv, logs it to W&B, keeps the latest state."""

    def __init__(self, out: Path, run=None) -> None:
        self.out, self.run, self.state, self.rows = out, run, None, []

    def restore(self):
        return None

    def report(self, metrics: dict, state: dict) -> None:
        self.state = state
        self.rows.append(dict(metrics))
        shown = " ".join(f"{k} {metrics[k]:.4g}" for k in ("train_loss", "train_acc", "val_loss", "val_acc")
                         if k in metrics)
        print(f"epoch {metrics.get('epoch')}: {shown} ({metrics.get('epoch_time_s', 0):.1f} s)", flush=True)
        with open(self.out / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in self.rows for k in r)))
            writer.writeheader()
            writer.writerows(self.rows)
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            except Exception as e:  # noqa: BLE001 - W&B never ends a run
                print(f"tune_app: warning: W&B logging failed ({type(e).__name__}: {e}); training goes on",
                      file=sys.stderr)
                self.run = None


def start_wandb(args, name: str, config: dict, out: Path):
    from tune_app.integrations.wandb_runs import resolve_mode, start_run

    mode = resolve_mode(args.wandb_mode)
    if mode == "disabled":
        return None
    try:
        run = start_run(mode, project=args.wandb_project, entity=args.wandb_entity, name=name, config=config,
                        job_type="train", dir=str(out))
        if mode == "offline":
            print(f"tune_app: W&B run kept offline; upload it later with: wandb sync {run.dir.rsplit('/files', 1)[0]}")
        return run
    except Exception as e:  # noqa: BLE001
        print(f"tune_app: warning: W&B unavailable ({type(e).__name__}: {e}); training goes on", file=sys.stderr)
        return None


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.train") -> int:
    args = build_parser(prog).parse_args(argv)
    return one_line(_train, args)


def _train(args) -> int:
    from trainables.catalog import get_trainable
    from trainables.data import DataError, prepare
    from trainables.registry import UnknownName

    try:
        trainable = get_trainable(args.trainable)
    except UnknownName as e:
        raise UsageError(str(e)) from None
    config = config_of(args, trainable)
    try:
        dataset = prepare(config["dataset"], args.data_dir, val_fraction=config["val_fraction"],
                          split_seed=config["split_seed"])
    except DataError as e:
        raise UsageError(str(e)) from None
    name = trainable.run_name(config)
    out = Path(args.out or f"runs/train-{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = start_wandb(args, name, config, out)
    reporter = RunReporter(out, run)
    print(f"tune_app: training {args.trainable} {name} on {dataset.name} into {out}", flush=True)
    try:
        trainable.fit(config, dataset.sweep_view(), reporter)
    except ValueError as e:  # a configuration the trainable refuses once it sees the data
        raise UsageError(str(e).strip().splitlines()[0]) from None
    finally:
        if run is not None:
            run.finish()
    with open(out / "state.pkl", "wb") as fh:
        pickle.dump(reporter.state, fh)
    last = reporter.rows[-1] if reporter.rows else {}
    print(f"tune_app: done: val_acc {100 * last.get('val_acc', float('nan')):.2f} % after "
          f"{last.get('epoch')} epochs; history and state in {out}")
    return 1 if last.get("diverged") else 0


if __name__ == "__main__":
    sys.exit(main())
