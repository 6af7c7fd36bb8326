"""``python -m tune_app.analyze``."""
from tune_app.analyze.cli import main
from tune_app.command import exit_with

exit_with(main())
