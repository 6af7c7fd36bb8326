"""``python -m tune_app.retrain``."""
import sys

from tune_app.retrain.cli import main

sys.exit(main())
