"""Each of the user's own models (``model="module:attr"``) built and run on a batch before anything runs, so
that a factory that does not take the sweep's arguments or a model whose output has the wrong shape fails in
one line before the sweep starts, not in every trial. ``params`` is the trainable's PARAMS (its ``model`` key
takes ``model.NAME`` arguments)."""
from __future__ import annotations

import inspect
import itertools

import numpy as np
import torch

from trainables.device_loop import DeviceData
from trainables.imports import first_line, is_ref, ref_name
from trainables.models import check_module, import_factory
from trainables.params import Param, is_factory_arg

CHECK_BATCH = 2  # training images check_user_models runs through each user model
MAX_ARG_COMBINATIONS = 16  # check_user_models builds at most this many variants of each user model


def check_user_models(params: dict[str, Param], values: dict[str, list], data: dict) -> None:
    """Build each user model (the ``module:attr`` values of ``model`` in ``values``, as image_classifier's
    check_space imports them) on the CPU for ``data`` (``Dataset.sweep_view()``) and run it forward in eval mode
    on 2 normalized training images, before anything runs; once per combination of the first and last value of
    each ``model.NAME`` key (at most MAX_ARG_COMBINATIONS). Built-in models are not checked here. Raises a one-line
    ValueError when the factory does not take ``num_classes``/``input_shape``/the keys, raises, returns something
    that is not an ``nn.Module``, or the output's shape is not (2, num_classes). Leaves torch's RNG as it was."""
    refs = dict.fromkeys(m for m in values.get("model", [params["model"].default]) if is_ref(m))
    if not refs:
        return
    with torch.random.fork_rng(devices=[]):  # building a model draws from the caller's generator
        batch = check_batch(data)
        for ref in refs:
            factory = import_factory(ref)
            for args in arg_combinations(params, values):
                model = call_factory(ref, factory, args, data)
                check_forward(ref, model, args, batch, data["num_classes"])


def check_batch(data: dict) -> torch.Tensor:
    x = data["x_train"][:CHECK_BATCH]
    images = DeviceData(x, np.zeros(len(x), np.int64), data["mean"], data["std"], torch.device("cpu"))
    return images.normalize(images.x)


def arg_combinations(params: dict[str, Param], values: dict[str, list]) -> list[dict]:
    """The ``model.NAME`` keys as factory arguments, every combination of each key's first and last value: the
    extremes of a size are where a model breaks. A key without checkable values (a custom sampler) is left out."""
    keys = sorted(k for k in values if is_factory_arg(params, k) and values[k])
    ends = [values[k][:1] + values[k][-1:] if len(values[k]) > 1 and values[k][0] != values[k][-1]
            else values[k][:1] for k in keys]
    names = [k.partition(".")[2] for k in keys]
    return [dict(zip(names, combo)) for combo in itertools.islice(itertools.product(*ends), MAX_ARG_COMBINATIONS)]


def call_factory(ref: str, factory, args: dict, data: dict) -> torch.nn.Module:
    kwargs = {"num_classes": data["num_classes"], "input_shape": tuple(int(n) for n in data["input_shape"]), **args}
    call = f"{ref_name(ref)}({call_args(kwargs)})"
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"model {ref!r}: {call} does not fit its signature ({e}); it must accept num_classes=int, "
                         f"input_shape=(C, H, W) and each model.NAME key as keyword arguments") from None
    except ValueError:
        pass  # no signature to read (a C function): the call itself tells
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ValueError(f"model {ref!r}: {call} raised {type(e).__name__}: {first_line(e)}") from None
    check_module(ref, model)
    return model


def check_forward(ref: str, model: torch.nn.Module, args: dict, batch: torch.Tensor, num_classes: int) -> None:
    where = f"model {ref!r}" + (f" ({call_args(args)})" if args else "")
    model.eval()
    try:
        with torch.inference_mode():
            out = model(batch)
    except Exception as e:
        raise ValueError(f"{where}: forward on a batch of shape {tuple(batch.shape)} raised {type(e).__name__}: "
                         f"{first_line(e)}") from None
    want = (len(batch), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"{where} outputs {got} for a batch of shape {tuple(batch.shape)}; it must output {want}: "
                         f"one logit per class")


def call_args(args: dict) -> str:
    """``hidden=64, depth=2``: keyword arguments as a call writes them."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
