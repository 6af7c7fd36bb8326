"""The names of what a run directory holds, in one place (the schema of each file: docs/run-directory.md)."""

SPEC_FILE = "tune_app.json"  # what a sweep was started with; --resume reads it back
SUMMARY_DIR = "summary"  # tune_app.analyze's tables, plots and reports
RETRAIN_DIR = "retrain"  # what tune_app.retrain writes
