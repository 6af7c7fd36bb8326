"""The model file a retrain writes (``retrain/model.pt``) and ``load_model``, which reads it back ready to predict:
``tune_app.retrain.load_model("runs/<name>/retrain/model.pt").predict(images)``."""
from __future__ import annotations

import numpy as np

MODEL_FILE = "model.pt"
MODEL_FORMAT = "tune_app.model/1"


class TrainedModel:
    """A model file, ready to predict: ``load_model("runs/<name>/retrain/model.pt").predict(images)``.

    ``images`` are uint8 arrays shaped (N, C, H, W) like the dataset's; normalization is part of the model.
    ``module`` is the PyTorch network for image_classifier (None for the NumPy MLP)."""

    def __init__(self, payload: dict, device: str = "cpu") -> None:
        from tune_app.trainable import builtin
        from tune_app.usercode import add_path, local_paths

        self.payload = payload
        for folder in local_paths(payload.get("code")):  # a model of the user's ("module:attr") is imported there
            add_path(folder)
        self.trainable = builtin(payload["trainable"])
        self.config, self.data = payload["config"], payload["data"]
        self.classes = list(self.data["classes"])
        self.state = {"config": self.config, **payload["state_dict"]}
        self.device = device
        self.trainable.check_weights(self.state, self.data)
        load = self.trainable.extra.get("load_model")  # the NumPy MLP has no torch module
        self.module = load(self.state, self.data, device) if load is not None else None

    def predict(self, images: np.ndarray) -> np.ndarray:
        self._check(images)
        kwargs = {"device": self.device} if self.module is not None else {}
        return self.trainable.predict(self.state, images, self.data, **kwargs)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) on uint8 images and integer labels."""
        self._check(images)
        kwargs = {"device": self.device} if self.module is not None else {}
        return self.trainable.evaluate(self.state, images, labels, self.data, **kwargs)

    def _check(self, images: np.ndarray) -> None:
        if tuple(images.shape[1:]) != tuple(self.data["input_shape"]):
            raise ValueError(f"images of shape {tuple(images.shape[1:])}; this model takes "
                             f"{tuple(self.data['input_shape'])} (C, H, W) uint8 images")


def load_model(path, device: str = "cpu") -> TrainedModel:
    """Load a model file written by ``tune_app.retrain``. Raises ValueError (one line) when the file is not one, or
    its weights do not fit the model its config describes."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - not a torch file at all (UnpicklingError, zip errors, ...): one line
        raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a tune_app model file (no format {MODEL_FORMAT!r}); write one with "
                         f"python -m tune_app.retrain")
    try:
        return TrainedModel(payload, device)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
