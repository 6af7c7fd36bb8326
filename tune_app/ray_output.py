"""Ray Tune's console output as tune_app wants it; imported before Ray is.

Ray reads these variables when it is imported or a run starts; setdefault leaves
anything the user set alone.
"""
import os

# Ray's compact table reporter (trials done/running/pending, best so far, elapsed time)
# is the legacy output path; the new one cannot show parameters and the best trial.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# A checkpoint every epoch is the point (ASHA, PBT and --resume continue mid-trial);
# Ray's warning about the resulting experiment-state snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Starting a trial's W&B logging actor takes about a second on a small machine; warn
# only about slower steps.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "3")
# W&B's banners (a dozen lines per run: version, sync hints, run links) would bury tune_app's own lines, a
# retrain's in particular; tune_app says where offline runs are and how to sync them.
os.environ.setdefault("WANDB_SILENT", "true")

# Ray 2.5x+ warns on every start of a local Ray that it uses token authentication (a line before any of
# tune_app's own); the setting itself is left as Ray chose it.
import logging  # noqa: E402

logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
