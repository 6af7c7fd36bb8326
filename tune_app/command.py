"""``tune_app.analyze`` and ``tune_app.retrain`` are both a command's module (``python -m tune_app.analyze``,
``tune_app.analyze.run``) and a Python function (``tune_app.analyze(run_dir)``): calling the module calls its
``call``. Binding functions of those names in the package would hide the modules that ``from tune_app import
analyze`` must find. ``exit_with`` ends a command's process."""
import sys
import types


class CommandModule(types.ModuleType):
    """A module whose call is its ``call`` function."""

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def callable_command(module: types.ModuleType) -> None:
    module.__class__ = CommandModule


def exit_with(code) -> None:
    """End a command's process with ``code`` once its threads have finished and its exit handlers have run (Ray's
    shutdown, W&B's, logging's flush), leaving out Python's teardown of its modules: torch's and Ray's take about
    a second and do nothing a finished command needs. (At that teardown Python also sets its signal handlers back
    to the defaults, where a late SIGTERM would turn a sweep's 143 into a kill.)"""
    import atexit
    import os
    import threading

    code = 0 if code is None else code if isinstance(code, int) else 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)
