"""The tests read W&B run files back with tune_app's own reader (tune_app.integrations.wandb_files)."""
from tune_app.integrations.wandb_files import read_run, records

__all__ = ["read_run", "records"]
