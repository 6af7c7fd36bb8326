"""``python -m tune_app.search``."""
import sys

from tune_app.search.cli import main

sys.exit(main())
