"""Retrain the winner of a sweep whose trainable is the user's own: ``python -m tune_app.retrain runs/<name>``.

The same ``fit`` runs each (configuration, seed) as a Ray task with the sweep's resources, on the
data the space's ``load_data()`` returns; where the trainable's module defines
``evaluate(state, data) -> {name: number}``, the final state of every run is measured with it (the
test-set metrics). ``<run dir>/retrain/retrain.json`` keeps every run's history and numbers, the mean
and spread per configuration, and whether the seed the trial ran with repeated the sweep's number.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tune_app.errors import UsageError
from tune_app.report.documents import retrain_console
from tune_app.retrain.results import mean_std
from tune_app.rundir.layout import RETRAIN_DIR


def retrain_one(ref: str, code_paths: list[str], config: dict, data, cpus: float) -> dict:
    """One seed through the trainable's ``fit`` (imported here, in the worker), then its ``evaluate``."""
    import importlib

    import torch

    from trainables.imports import import_attr
    from trainables.reporting import LocalReporter
    from tune_app.usercode import use_paths

    use_paths(code_paths)
    torch.set_num_threads(max(1, math.floor(cpus)))
    fit = import_attr(ref, "trainable")
    module = importlib.import_module(ref.split(":")[0])
    reporter = LocalReporter()
    t0 = time.perf_counter()
    fit(config, data, reporter)
    seconds = time.perf_counter() - t0
    evaluate = getattr(module, "evaluate", None)
    test = {k: float(v) for k, v in evaluate(reporter.state, data).items()} if evaluate is not None else {}
    history = [{k: v for k, v in h.items() if isinstance(v, (int, float, bool, str))} for h in reporter.history]
    for i, h in enumerate(history, 1):
        h.setdefault("epoch", i)
    return {"seed": config.get("seed"), "history": history, "test": test, "seconds": seconds}


def run(plan) -> Path:
    """Every seed of every candidate, then retrain.json. Returns the retrain folder."""
    import ray

    from tune_app.cluster.session import join_ray
    from tune_app.sweep_data import load_data
    from tune_app.usercode import local_paths

    space, spec = plan.sweep.space, plan.sweep.spec
    data = load_data(space, plan.settings, spec.get("workdir")).sweep_view()
    metric, mode = plan.sweep.metric, plan.sweep.mode
    started = join_ray(plan.settings, spec.get("code"))
    try:
        settings = plan.settings
        gpus = 0.0 if settings["gpus_per_trial"] == "auto" else settings["gpus_per_trial"]
        task = ray.remote(num_cpus=settings["cpus_per_trial"], num_gpus=gpus, max_calls=1)(retrain_one)
        data_ref = ray.put(data)
        runs = sum(len(c.seeds) for c in plan.candidates)
        print(f"tune_app: retraining {len(plan.candidates)} configuration(s) of {plan.sweep.name} x "
              f"{len(plan.candidates[0].seeds)} seeds = {runs} runs of {plan.trainable.name}; configurations: "
              f"{plan.chosen}", flush=True)
        pending = {task.remote(plan.trainable.ref, local_paths(spec.get("code")), {**c.config, "seed": seed},
                               data_ref, settings["cpus_per_trial"]): c for c in plan.candidates for seed in c.seeds}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            candidate = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise UsageError(f"retrain of {candidate.trial_name}: {plan.trainable.name} raised "
                                 f"{(str(e.cause) or type(e.cause).__name__).splitlines()[0]}") from None
            candidate.runs.append(result)
            last = result["history"][-1] if result["history"] else {}
            tests = ", ".join(f"{k} {v:.4g}" for k, v in result["test"].items())
            print(f"tune_app: [{runs - len(pending)}/{runs}] {candidate.trial_name} seed {result['seed']}: "
                  f"{metric} {last.get(metric)}{', ' + tests if tests else ''} ({result['seconds']:.0f} s)",
                  flush=True)
    finally:
        if started:
            ray.shutdown()
    summary = summarize(plan, metric, mode)
    out = write(plan.run_dir, summary)
    print(retrain_console(summary))
    print(f"Retrain: {out / 'retrain.json'}")
    return out


def summarize(plan, metric: str, mode: str) -> dict:
    configs = []
    for c in plan.candidates:
        c.runs.sort(key=lambda r: c.seeds.index(r["seed"]))
        finals = [r["history"][-1].get(metric) if r["history"] else None for r in c.runs]
        test_keys = sorted({k for r in c.runs for k in r["test"]})
        own = next((r for r in c.runs if r["seed"] == c.own_seed), None)
        epochs = int(c.search.get("epochs") or 0)
        reproduction = None
        if own is not None and plan.epochs is None and 0 < epochs <= len(own["history"]):
            again, swept = own["history"][epochs - 1].get(metric), c.search.get("last_value")
            reproduction = {"seed": c.own_seed, "epoch": epochs, "sweep": swept, "retrain": again,
                            "identical": again is not None and swept is not None and float(again) == float(swept)}
        configs.append({"rank": c.rank, "trial_id": c.trial_id, "trial_name": c.trial_name,
                        "config": {k: v for k, v in c.config.items() if k != "seed"}, "seeds": c.seeds,
                        "search": c.search, "retrain_val": mean_std(finals),
                        "test": {k: mean_std([r["test"].get(k) for r in c.runs]) for k in test_keys},
                        "reproduction": reproduction,
                        "runs": [{"seed": r["seed"], metric: f, "test": r["test"], "seconds": r["seconds"],
                                  "history": r["history"]} for r, f in zip(c.runs, finals)]})
    sign = 1 if mode == "max" else -1
    kept = max(configs, key=lambda c: sign * (c["retrain_val"]["mean"] if c["retrain_val"]["mean"] is not None
                                               else -sign * math.inf))
    return {"run_dir": str(plan.run_dir), "sweep": plan.sweep.name, "space": plan.sweep.spec["space"],
            "trainable": plan.trainable.name, "metric": metric, "mode": mode, "selection_rule": plan.rule,
            "configs": configs, "kept": {"rank": kept["rank"], "trial_id": kept["trial_id"], "config": kept["config"]},
            "test_metrics": kept["test"]}


def write(run_dir: Path, summary: dict) -> Path:
    """retrain/retrain.json, swapped in whole (a crash leaves the old folder or the new one)."""
    from tune_app.rundir.atomic import write_folder

    return write_folder(Path(run_dir) / RETRAIN_DIR, lambda tmp: (tmp / "retrain.json").write_text(
        json.dumps(summary, indent=1, default=str) + "\n"))
