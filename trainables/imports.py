"""``"module:attr"`` references to the user's own code, e.g. ``model="mymodels:Net"``.

``is_ref`` checks the syntax only (it runs on every config check); ``import_attr`` imports
the module (it must be importable: on ``sys.path``) and walks the attribute path. Neither
imports torch, so ``trainables.params`` can use them.

    >>> is_ref("mymodels:Net"), is_ref("pkg.models:Factory.build"), is_ref("vgg6")
    (True, True, False)
"""
from __future__ import annotations

import importlib


def is_ref(value: object) -> bool:
    """True for ``module:attr`` where both sides are dotted Python identifiers."""
    if not isinstance(value, str):
        return False
    module, colon, attr = value.partition(":")
    return bool(colon) and all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def ref_name(ref: str) -> str:
    """The attribute path of a reference (``Net`` for ``mymodels:Net``): a name for tables and folders."""
    return ref.partition(":")[2]


def import_attr(ref: str, kind: str = "model") -> object:
    """The object ``ref`` (``module:attr``) names. Raises a one-line ValueError that names ``kind`` and ``ref``
    when the syntax is wrong, the module cannot be imported (with the ImportError's reason) or lacks the attribute.
    """
    if not is_ref(ref):
        raise ValueError(f"{kind} {ref!r} is not a 'module:attr' reference (e.g. 'mymodels:Net')")
    module_name, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{kind} {ref!r}: cannot import {module_name} ({first_line(e)}); put it on PYTHONPATH "
                         f"or next to the space file") from None
    except Exception as e:  # the module's own code failed: a syntax error, an exception at import time
        raise ValueError(f"{kind} {ref!r}: importing {module_name} raised {type(e).__name__}: {first_line(e)}"
                         ) from None
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{kind} {ref!r}: {where} has no attribute {part!r}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    return obj
