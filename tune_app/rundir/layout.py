"""The names of what a run directory holds, in one place (the schema of each file: docs/run-directory.md)."""

SPEC_FILE = "tune_app.json"  # what a sweep was started with; --resume reads it back
SUMMARY_DIR = "summary"  # tune_app.analyze's tables, plots and reports
RETRAIN_DIR = "retrain"  # what tune_app.retrain writes
PLAN_FILE = "plan.json"  # --plan's cost estimate, one row per configuration
GPU_PLAN_FILE = "gpu_plan.json"  # --gpus-per-trial auto's measured peaks and GPU shares
BUDGET_FILE = "budget.json"  # --budget-hours: the device-seconds spent and whether the budget stopped the sweep
JOURNAL_FILE = "optuna.journal"  # the Optuna searcher's study, resumable
RUNS = "runs"  # --repeats: a report's key holding each run's numbers, {"0": {...}, ...}; runs/0/<name> flattened
