"""``python -m tune_app.analyze``."""
import sys

from tune_app.analyze.cli import main

sys.exit(main())
