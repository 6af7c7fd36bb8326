"""Run directories written file by file in Ray Tune's layout (params.json, result.json,
progress.csv, error.txt per trial folder), for analysis tests that need exact, known numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

ERROR_TXT = """Failure # 1 (occurred at 2026-11-22_10-00-00)
ray::ImplicitFunc.train() (pid=123, ip=127.0.0.1, actor_id=abc, repr=func)
  File "trainables/image_classifier.py", line 300, in fit
    raise RuntimeError("CUDA error: out of memory")
RuntimeError: CUDA error: out of memory
"""


def sweep_trials(n: int = 12, seed: int = 0) -> list[dict]:
    """Trials of an ASHA-like sweep over optimizer x lr x batch size: full runs of 6 epochs, early stops
    at 2 and 4, one trial that diverges at epoch 3 and one that fails at epoch 1. lr drives val_acc."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        optimizer = ["adam", "sgd", "rmsprop"][i % 3]
        depth = [6, 2, 4, 2][i % 4]
        how = "diverged" if i == n - 2 else "error" if i == n - 1 else "ok"
        depth = 3 if how == "diverged" else 1 if how == "error" else depth
        quality = 0.9 - 0.15 * abs(math.log10(lr) + 2.5)
        history, t0 = [], 1_795_000_000.0 + 7 * i
        for epoch in range(1, depth + 1):
            acc = quality * (1 - 0.5 ** epoch) + 0.002 * rng.normal()
            bad = how == "diverged" and epoch == depth
            history.append({"epoch": epoch, "train_loss": math.nan if bad else 1.5 / epoch,
                            "train_acc": 0.0 if bad else acc + 0.02, "val_loss": math.nan if bad else 1.4 / epoch,
                            "val_acc": 0.0 if bad else acc, "lr": lr, "epoch_time_s": 1.0 + 0.1 * i,
                            "samples_per_s": 1000.0, "peak_mem_mb": 100.0, "params": 5000, "diverged": bad,
                            "timestamp": t0 + 3 * epoch})
        trials.append({"trial_id": f"{i:04d}beef", "how": how,
                       "config": {"optimizer": optimizer, "lr": lr, "batch_size": [32, 64][i % 2], "epochs": 6,
                                  "model": "digits_cnn"}, "history": history})
    return trials


def write_experiment(path: Path, trials: list[dict], with_csv: bool = True) -> Path:
    """Trial folders as Ray Tune writes them, and nothing of tune_app's."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "experiment_state-2026-11-22_10-00-00.json").write_text("{}")
    for t in trials:
        folder = path / f"func_{t['trial_id']}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(t["config"]))
        rows = [{**h, "training_iteration": h["epoch"], "trial_id": t["trial_id"],
                 "time_this_iter_s": h["epoch_time_s"], "done": False} for h in t["history"]]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if with_csv:
            pd.DataFrame(rows).to_csv(folder / "progress.csv", index=False)
        if t["how"] == "error":
            (folder / "error.txt").write_text(ERROR_TXT)
    return path
