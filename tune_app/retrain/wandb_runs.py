"""A retrain in W&B: one run per seed in the sweep's group, the kept model as an artifact."""
from __future__ import annotations

import sys
from pathlib import Path

from tune_app.retrain.model import MODEL_FILE
from tune_app.retrain.plan import Plan


def log_wandb(plan: Plan, summary: dict, out: Path) -> None:
    """One run per retrain seed in the sweep's group; the kept model as an artifact of type model, alias best.
    A W&B failure is a warning: the files on disk are complete without it."""
    from tune_app.integrations.wandb_runs import resolve_mode

    settings = plan.settings
    mode = resolve_mode(settings.get("wandb_mode"))
    if mode == "disabled":
        return
    try:
        import wandb

        from tune_app.integrations.wandb_runs import start_run

        for cfg in summary["configs"]:
            for seed_run in cfg["runs"]:
                kept = cfg["rank"] == summary["model"]["rank"] and seed_run["seed"] == summary["model"]["seed"]
                run = start_run(mode, project=settings.get("wandb_project"), entity=settings.get("wandb_entity"),
                                group=plan.sweep.name, job_type="retrain", dir=str(plan.run_dir),
                                name=f"{cfg['trial_name']}-retrain-seed{seed_run['seed']}",
                                config={**cfg["config"], "seed": seed_run["seed"], "rank": cfg["rank"],
                                        "train_on": plan.train_on, "search_trial_id": cfg["trial_id"]})
                try:
                    for row in seed_run["history"]:
                        run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None},
                                step=int(row["epoch"]))
                    run.summary.update({"test_acc": seed_run["test_acc"], "test_loss": seed_run["test_loss"]})
                    if kept:
                        artifact = wandb.Artifact(f"{plan.sweep.name}-model", type="model",
                                                  metadata={"trial_name": cfg["trial_name"], "seed": seed_run["seed"],
                                                            "test_acc": seed_run["test_acc"],
                                                            "trainable": summary["trainable"]})
                        artifact.add_file(str(out / MODEL_FILE))
                        run.log_artifact(artifact, aliases=["best", "latest"])
                finally:
                    run.finish()
        if mode == "offline":
            print(f"tune_app: W&B retrain runs kept offline; upload them with: wandb sync "
                  f"{plan.run_dir}/wandb/offline-run-*", flush=True)
    except Exception as e:  # noqa: BLE001 - W&B must never cost the retrain
        print(f"tune_app: warning: W&B logging of the retrain failed ({type(e).__name__}: {e}); the files in {out} "
              f"are complete", file=sys.stderr)
