"""Retrain a sweep's best configurations and measure them on the test set:
``python -m tune_app.retrain runs/<name>``.

A sweep's best validation accuracy is partly luck: one seed, one split, the maximum of many
noisy numbers. This retrains the best configuration (or the top K, ``--configs K``) with several
seeds through the same ``fit`` the sweep ran, then evaluates each final model on the test set,
which no part of the search has seen. By default the seeds are the trial's own seed and the
next ones, so the first retrain repeats the sweep's trial: on a CPU it must give the sweep's
numbers to the last digit, and ``retrain.json`` says whether it did.

Selection never looks at the test set: the model kept is the configuration with the best mean
validation metric over its seeds, and its seed with the best validation metric (with
``--train-on train+val`` there is no validation split: the search's ranking and the lowest
training loss decide).

Writes ``<run dir>/retrain/``: ``retrain.json`` (every number and its provenance),
``model.pt`` (load it with ``tune_app.retrain.load_model(path)``), ``confusion_matrix.csv`` and
``.png``, ``per_class.csv`` and ``samples.png`` (one test image per class with its prediction);
with ``--predict PATH`` also ``submission.csv`` (``id,label``) for a folder of images or an ``.npy``
array; and for a robustness sweep (metric ``ood_acc``, study 5) or ``--corruptions``,
``robustness.csv``: the kept model's accuracy per corruption and severity on corrupted copies of
the test set (generated, or CIFAR-100-C's files with ``--corruption-dir``). The folder is built
under a temporary name and swapped in whole; the sweep's report gains a retrain section.

One module per job: ``cli`` (the command line, ``run`` and ``call``), ``plan`` (what to retrain, checked before
anything runs), ``tasks`` (the dataset and the Ray tasks), ``results`` (retrain.json's numbers), ``model`` (the
model file and ``load_model``), ``files`` (the retrain folder and the report), ``wandb_runs`` (W&B) and ``own``
(the retrain of a user's own trainable).
"""
import sys

from tune_app.cluster import console

console.quiet()  # Ray's and W&B's console settings: before Ray is imported (the modules below import it)

from tune_app.command import callable_command  # noqa: E402
from tune_app.retrain.cli import build_parser, call, main, run  # noqa: E402
from tune_app.retrain.model import MODEL_FILE, MODEL_FORMAT, TrainedModel, load_model  # noqa: E402
from tune_app.retrain.plan import Candidate, Plan, make_plan  # noqa: E402
from tune_app.retrain.tasks import load_dataset, training_view  # noqa: E402
from tune_app.rundir.layout import RETRAIN_DIR  # noqa: E402

__all__ = ["MODEL_FILE", "MODEL_FORMAT", "RETRAIN_DIR", "Candidate", "Plan", "TrainedModel", "build_parser", "call",
           "load_dataset", "load_model", "main", "make_plan", "run", "training_view"]

callable_command(sys.modules[__name__])  # tune_app.retrain(run_dir, seeds=3) from Python is call(run_dir, seeds=3)
