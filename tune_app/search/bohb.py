"""Ray's BOHB searcher, giving the trainable plain Python values: ConfigSpace draws numpy scalars (``np.True_``,
``np.int64(64)``), which a trainable's type checks rightly refuse and JSON cannot write."""
from __future__ import annotations

import numpy as np
from ray.tune.search.bohb import TuneBOHB


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


class PlainBOHB(TuneBOHB):
    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return plain(config) if isinstance(config, dict) else config
