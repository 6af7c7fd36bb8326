"""The data a sweep's trials train on, read once by the driver: a built-in dataset (trainables.data) or what a
space's own ``load_data()`` returns; and the check that a model of the user's builds on it before Ray starts."""
from __future__ import annotations

from tune_app.errors import UsageError, first_line


def load_data(space, settings: dict, workdir: str | None = None):
    """The driver reads (or downloads) the dataset once; trials get it from the object store. A trainable of
    the user's gets what its space's ``load_data()`` returns (an ``OwnData``), or None without one.
    ``workdir``: where the sweep was started (relative dataset paths are relative to it)."""
    if not space.trainable.builtin:
        return OwnData(call_load_data(space))
    from trainables.data import DataError, prepare

    try:
        return prepare(space.constant("dataset"), settings["data_dir"], val_fraction=space.constant("val_fraction"),
                       split_seed=space.constant("split_seed"), image_size=space.constant("image_size") or 0,
                       base_dir=workdir)
    except DataError as e:
        raise UsageError(str(e)) from None


def call_load_data(space):
    if space.load_data is None:
        return None
    try:
        return space.load_data()
    except Exception as e:  # noqa: BLE001 - the user's function: its one-line reason
        raise UsageError(f"space {space.ref!r}: load_data() raised {type(e).__name__}: {first_line(e)}") from None


class OwnData:
    """What a trainable of the user's is given as ``data``: the space's ``load_data()`` result, shared as is."""

    def __init__(self, value) -> None:
        self.value = value
        self.name = "load_data()" if value is not None else None

    def sweep_view(self):
        return self.value


def check_models(space, dataset) -> None:
    """A model of the user's is built and run forward on one batch before Ray starts."""
    check = getattr(space.trainable, "check_models", None) if space.trainable.builtin else None
    if check is None:
        return
    from tune_app.spaces import domain_values

    try:
        check({key: domain_values(value) for key, value in space.param_space.items()}, dataset.sweep_view())
    except ValueError as e:
        raise UsageError(f"space {space.ref!r}: {e}") from None
