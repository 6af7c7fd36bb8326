"""What a retrain reads and writes on disk: the --predict images, the ``retrain/`` folder (model file, tables,
figures, submission, retrain.json; built under a temporary name and swapped in whole) and the sweep's report,
refreshed to show it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tune_app import imageset
from tune_app.errors import UsageError
from tune_app.retrain.model import MODEL_FILE, MODEL_FORMAT, load_model
from tune_app.retrain.plan import Plan
from tune_app.rundir.atomic import write_folder
from tune_app.rundir.layout import RETRAIN_DIR


def read_predict(plan: Plan, dataset):
    """The --predict images, read before anything trains so a bad path costs nothing."""
    if plan.predict is None:
        return None
    try:
        return imageset.read_images(plan.predict, dataset.input_shape)
    except imageset.ImageSetError as e:
        raise UsageError(str(e)) from None


def model_payload(plan: Plan, dataset, summary: dict) -> dict:
    from tune_app.integrations.provenance import provenance

    kept = next(c for c in plan.candidates if c.rank == summary["model"]["rank"])
    run = next(r for r in kept.runs if r["seed"] == summary["model"]["seed"])
    return {"format": MODEL_FORMAT, "trainable": summary["trainable"], "config": run["config"],
            "state_dict": run["weights"], "data": data_meta(dataset), "code": plan.sweep.spec.get("code"),
            "metrics": {"test_acc": run["test_acc"], "test_loss": run["test_loss"]},
            "provenance": {**provenance(sweep=plan.sweep.name, trial_id=kept.trial_id, train_on=plan.train_on),
                           "sweep_provenance": plan.sweep.spec.get("provenance")}}


def data_meta(dataset) -> dict:
    return {"name": dataset.name, "classes": list(dataset.classes), "mean": list(dataset.mean),
            "std": list(dataset.std), "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
            "fingerprint": dataset.fingerprint()}


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_files(plan: Plan, dataset, summary: dict, payload: dict, to_predict=None) -> Path:
    """Build the retrain folder under a temporary name, then swap it in: a failure or a kill midway leaves the
    previous retrain whole."""
    import pandas as pd
    import torch

    from tune_app import plots

    def fill(tmp: Path) -> None:
        torch.save(payload, tmp / MODEL_FILE)
        classes = list(dataset.classes)
        confusion = np.asarray(summary["confusion_matrix"])
        pd.DataFrame(confusion, index=classes, columns=classes).to_csv(tmp / "confusion_matrix.csv",
                                                                        index_label="true \\ predicted")
        kept = next(c for c in summary["configs"] if c["rank"] == summary["model"]["rank"])
        pd.DataFrame({"class": classes, "test_images": summary["test_per_class_n"],
                      "acc_mean_over_seeds": kept["per_class_acc"],
                      "acc_kept_model": np.diag(confusion) / np.maximum(confusion.sum(1), 1)}).to_csv(
            tmp / "per_class.csv", index=False)
        plots.confusion_png(tmp / "confusion_matrix.png", confusion, classes,
                            f"{summary['model']['trial_name']} seed {summary['model']['seed']}: test set")
        predicted = load_model(tmp / MODEL_FILE).predict(dataset.x_test)
        plots.samples_png(tmp / "samples.png", dataset.x_test, dataset.y_test, predicted, classes)
        if "robustness" in summary:
            pd.DataFrame(summary["robustness"]["sets"]).to_csv(tmp / "robustness.csv", index=False)
        if to_predict is not None:
            ids, images = to_predict
            model = load_model(tmp / MODEL_FILE, device=best_device())
            imageset.write_submission(tmp / "submission.csv", ids, model.predict(images))
        (tmp / "retrain.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")

    return write_folder(plan.run_dir / RETRAIN_DIR, fill)


def refresh_report(plan: Plan) -> None:
    """Re-analyze with the choices the summary was made with (read back from its files), so the report shows
    the retrain section."""
    from tune_app import analyze

    options = analyze.saved_options(plan.run_dir)
    try:
        analyze.run(plan.run_dir, wandb_mode="disabled", quiet=True, **options)
    except UsageError as e:
        print(f"tune_app: warning: the report was not refreshed ({e})", file=sys.stderr)
