"""What tune_app hands to and reads from other tools: W&B runs (``wandb_runs``) and their files read back
(``wandb_files``), and the provenance every number carries (``provenance``)."""
