"""``python -m tune_app.retrain``."""
from tune_app.command import exit_with
from tune_app.retrain.cli import main

exit_with(main())
