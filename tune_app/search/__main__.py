"""``python -m tune_app.search``."""
from tune_app.command import exit_with
from tune_app.search.cli import main

exit_with(main())
