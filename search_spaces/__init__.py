"""One module per study: what to search, nothing about where to run it.

Each module sets TRAINABLE, METRIC, MODE, SPACE and SETTINGS; its docstring says
which study it is, the command to run it and how long that takes.
"""
