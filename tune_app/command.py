"""``tune_app.analyze`` and ``tune_app.retrain`` are both a command's module (``python -m tune_app.analyze``,
``tune_app.analyze.run``) and a Python function (``tune_app.analyze(run_dir)``): calling the module calls its
``call``. Binding functions of those names in the package would hide the modules that ``from tune_app import
analyze`` must find."""
import types


class CommandModule(types.ModuleType):
    """A module whose call is its ``call`` function."""

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def callable_command(module: types.ModuleType) -> None:
    module.__class__ = CommandModule
