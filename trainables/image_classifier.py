"""The ``image_classifier`` trainable: a PyTorch CNN trained epoch by epoch.

``fit(config, data, reporter)`` serves the sweep (through tune_app's Ray adapter),
single runs and the final retrain alike. ``data`` is ``Dataset.sweep_view()``:
uint8 arrays that go to the trial's device once; batches are sliced from them and
augmented there.

Determinism: the seed drives model init, shuffling and augmentation (a
``torch.Generator`` on the device) and torch's global RNG (AutoAugment); all of
them are checkpointed, so a resumed trial continues exactly where it stopped. On a
CPU the same config, seed and thread count give the same metrics to the last digit.
On a GPU cuDNN's kernel choice (``cudnn.benchmark``) and atomic adds in some backward
kernels can change the last bits between runs; ``deterministic: true`` turns off
benchmarking, asks cuDNN and torch for deterministic kernels (warning where an op has
none) and fixes cuBLAS's workspace.

One batch goes: uint8 crop/flip/AutoAugment -> float rotation, color jitter, blur, noise
-> normalize -> Cutout -> MixUp/CutMix (soft targets) -> forward under autocast
(``amp``) in ``channels_last`` when asked -> label-smoothed cross-entropy -> step, and the
schedule steps per batch (warm-up, OneCycle) and per epoch (cosine, StepLR, plateau).
Early stopping ends a trial whose ``early_stop_metric`` stopped improving; its last report
says ``early_stopped: True``. With ``ood_corruptions`` set, every epoch also scores the
model on corrupted copies of the validation images (``ood_acc``, study 5). The epoch loop itself
(the data on the device, a batch's augmentations, one epoch) is ``trainables.device_loop``.

``model`` is a built-in name or the user's own ``"module:attr"`` (an ``nn.Module`` class or a
function returning one, importable from ``sys.path``), called as ``attr(num_classes=...,
input_shape=(C, H, W), **model_args)`` where ``model_args`` are the config's ``model.NAME`` keys
(``model.hidden: 64`` -> ``hidden=64``). ``activation`` and ``batch_norm`` configure the built-ins
only and are not passed to it. ``check_space`` imports it and ``check_models`` builds it and runs
one batch through it before anything runs (``trainables.model_checks``).
"""
from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainables import corruptions
from trainables import data as datasets
from trainables.augment import MIX_MODES, AutoAugment
from trainables.device_loop import (
    DeviceData,
    Precision,
    batch_starts,
    compile_model,
    evaluate_model,
    ood_sets,
    peak_memory_mb,
    pick_device,
    setup_device,
    train_epoch,
)
from trainables.imports import is_ref, ref_name
from trainables.model_checks import call_args, check_user_models
from trainables.models import (
    ACTIVATIONS,
    MODELS,
    PRETRAINED,
    build_model,
    builtin_takes_no_args,
    import_factory,
)
from trainables.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from trainables.params import Param, factory_args, is_factory_arg, resolve


class CorruptionsParam(Param):
    """'none', 'all' or a comma list of corruption names (trainables.corruptions.CORRUPTIONS)."""

    def check(self, key: str, value):
        value = super().check(key, value)
        if value != "none":
            try:
                corruptions.parse_names(value)
            except ValueError as e:
                raise ValueError(f"{key}={value!r}: {e}") from None
        return value


class SeveritiesParam(Param):
    """Severities as '1,3,5' or '1-5' (0 = the clean image)."""

    def check(self, key: str, value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        value = super().check(key, value)
        try:
            corruptions.parse_severities(value)
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from None
        return value


class DatasetParam(Param):
    """A built-in dataset name, ``imagefolder:PATH`` or ``npz:PATH`` (trainables.data.check_name)."""

    def check(self, key: str, value):
        value = super().check(key, value)
        try:
            datasets.check_name(value)
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from None
        return value


PARAMS: dict[str, Param] = {
    # data (fixed for a sweep: prepared once by the driver)
    "dataset": DatasetParam("cifar10", str, "dataset name: a built-in, imagefolder:PATH or npz:PATH", data=True),
    "val_fraction": Param(0.1, float, "share of the training set held out", low=0.0, high=1.0, data=True),
    "split_seed": Param(0, int, "seed of the train/validation split (and of the corrupted copies)", low=0, data=True),
    "image_size": Param(0, int, "resize every image to this many pixels square when the dataset is read "
                        "(imagefolder:/npz:); 0 = keep", low=0, data=True),
    # model
    "model": Param("vgg6", str, "a built-in model name, or 'module:attr' for your own nn.Module class or a "
                   "function returning one; model.NAME keys are passed to it as NAME=...",
                   choices=MODELS.names, takes_args=True),
    "activation": Param("relu", str, "activation name (built-in models; not passed to your own)",
                        choices=ACTIVATIONS.names),
    "batch_norm": Param(True, bool, "batch norm after every conv (built-in models; not passed to your own)"),
    "pretrained_weights": Param("", str, "ImageNet .pth file for tv_resnet18/tv_resnet50; '' = random init"),
    # optimisation
    "optimizer": Param("sgd", str, "optimizer name", choices=OPTIMIZERS.names),
    "lr": Param(0.01, float, "learning rate per step, > 0 (OneCycle's peak)", low=1e-12),
    "momentum": Param(0.9, float, "SGD/Nesterov momentum in [0, 1)", low=0.0, high=1.0),
    "weight_decay": Param(0.0, float, "L2 weight decay, >= 0", low=0.0),
    "label_smoothing": Param(0.0, float, "share of the target spread over all classes, in [0, 1)",
                             low=0.0, high=1.0),
    "schedule": Param("none", str, "learning-rate schedule", choices=SCHEDULES.names),
    "warmup_epochs": Param(0.0, float, "epochs of linear lr warm-up, per step (OneCycle: its rising phase)",
                           low=0.0),
    "step_size": Param(30, int, "StepLR: epochs between lr drops", low=1),
    "step_gamma": Param(0.1, float, "StepLR: lr factor at each drop, > 0", low=1e-12),
    "plateau_patience": Param(2, int, "ReduceLROnPlateau: epochs without val_loss improvement", low=0),
    "plateau_factor": Param(0.1, float, "ReduceLROnPlateau: lr factor at each drop, in (0, 1)",
                            low=1e-12, high=1.0),
    "batch_size": Param(128, int, "examples per step, >= 1", low=1),
    "epochs": Param(20, int, "epochs to train, >= 1", low=1),
    "max_epochs": Param(0, int, "cap on epochs for the whole sweep; 0 = no cap", low=0),
    "diverge_loss": Param(0.0, float, "a mean training loss above this ends the trial as diverged (as NaN/inf "
                          "does); 0 = NaN/inf only. Guessing scores ln(classes): 2.3 for 10", low=0.0),
    "early_stop_patience": Param(0, int, "epochs without improvement before the trial stops; 0 = off", low=0),
    "early_stop_min_delta": Param(0.0, float, "smallest change of early_stop_metric that counts as improvement",
                                  low=0.0),
    "early_stop_metric": Param("val_loss", str, "what early stopping watches",
                               choices=lambda: ["val_loss", "val_acc"]),
    # augmentation
    "crop_padding": Param(0, int, "random-crop padding in pixels; 0 = off", low=0),
    "flip": Param(False, bool, "random horizontal flip"),
    "autoaugment": Param(False, bool, "AutoAugment, CIFAR-10 policy"),
    "rotation": Param(0.0, float, "random rotation up to this many degrees either way; 0 = off",
                      low=0.0, high=180.000001),
    "color_jitter": Param(0.0, float, "brightness/contrast/saturation factors in [1-s, 1+s]; 0 = off",
                          low=0.0, high=1.0),
    "blur_sigma": Param(0.0, float, "Gaussian blur of half the images, sigma up to this (pixels); 0 = off",
                        low=0.0),
    "noise_std": Param(0.0, float, "Gaussian pixel noise, std on the 0..1 scale; 0 = off", low=0.0),
    "cutout": Param(0, int, "Cutout square side in pixels; 0 = off", low=0),
    "mix": Param("none", str, "batch mixing; cutmix_mixup picks one per batch", choices=lambda: list(MIX_MODES)),
    "mix_alpha": Param(1.0, float, "MixUp/CutMix lambda ~ Beta(alpha, alpha), > 0", low=1e-12),
    # robustness (study 5): corrupted copies of the validation images, scored every epoch as ood_acc
    "ood_corruptions": CorruptionsParam("none", str, "'none', 'all' or a comma list of corruptions"),
    "ood_severities": SeveritiesParam("1-5", str, "corruption severities, e.g. '1-5' or '1,3,5'"),
    "ood_images": Param(1000, int, "validation images corrupted for ood_acc; 0 = all", low=0),
    # speed
    "amp": Param("auto", str, "mixed precision; auto = bf16 on a GPU (fp16 where bf16 is missing), off on a CPU",
                 choices=lambda: ["auto", "bf16", "fp16", "off"]),
    "compile": Param(False, bool, "torch.compile the model (on a GPU with CUDA graphs): faster steps after a "
                     "compile of tens of seconds; rarely worth it on a CPU"),
    "channels_last": Param("auto", str, "NHWC memory format; auto = on a GPU, off on a CPU",
                           choices=lambda: ["auto", "on", "off"]),
    "cache": Param("auto", str, "where the uint8 dataset lives: device memory, or host memory copied per batch; "
                   "auto = device", choices=lambda: ["auto", "device", "host"]),
    # run
    "seed": Param(0, int, "seed of init, shuffling and augmentation"),
    "eval_batch_size": Param(1024, int, "examples per evaluation step", low=1),
    "device": Param("auto", str, "where to train", choices=lambda: ["auto", "cpu", "cuda"]),
    "deterministic": Param(False, bool, "deterministic cuDNN kernels, amp off (slower on GPU)"),
}

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params",
           "cpu_s",  # process CPU seconds of the epoch (every thread: training, evaluation)
           "samples_seen")  # training samples since the trial began, over resumes (PBT: from the donor's weights)
OPTIONAL_METRICS = ("ood_acc",)  # reported when ood_corruptions is set; a space may rank by it


COST_KEYS = ("dataset", "model", "batch_norm", "batch_size", "autoaugment", "device", "amp", "channels_last", "compile",
             "ood_corruptions", "ood_severities", "ood_images")  # --plan probes each
# The model.NAME keys of a user model (its size, say) count for cost too: tune_app.cost.estimate adds them to these.
WEIGHT_KEYS = ("model",)  # the checkpoint entries that hold the trained weights (a model file keeps these)


def schedule_spans_run(config: dict) -> bool:
    """Cosine and OneCycle fit the learning rate to the planned epochs; constant, step and plateau do not."""
    return config.get("schedule", "none") in ("cosine", "onecycle")


def run_name(config: dict) -> str:
    """``vgg6_gelu_nadam_bs64_lr0.001``: readable in W&B and Ray's tables. A user model goes by its attribute
    path and without the activation, which it does not take: ``Net_adam_bs64_lr0.001`` for ``mymodels:Net``
    (identifiers and dots only, so it is also a folder name)."""
    c = {k: config.get(k, p.default) for k, p in PARAMS.items()}
    model = ref_name(c["model"]) if is_ref(c["model"]) else f"{c['model']}_{c['activation']}"
    return f"{model}_{c['optimizer']}_bs{c['batch_size']}_lr{c['lr']:.3g}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(cfg: dict, data: dict, pretrained: bool = True) -> torch.nn.Module:
    """The configured model (a user model with the config's ``model.NAME`` keys as its arguments); ImageNet
    weights from ``pretrained_weights`` only for a fresh model (a checkpoint carries all its weights) and only
    for the models that take them."""
    weights = cfg["pretrained_weights"] if pretrained and cfg["model"] in PRETRAINED else ""
    return build_model(cfg["model"], data["input_shape"], data["num_classes"], cfg["activation"],
                       cfg["batch_norm"], pretrained_weights=weights or None, model_args=factory_args(cfg, "model"))


def describe_model(cfg: dict) -> str:
    """``model vgg6 (batch_norm=True)``, or ``model mymodels:Net (hidden=64)``: what decides the weights' shapes."""
    if not is_ref(cfg["model"]):
        return f"model {cfg['model']} (batch_norm={cfg['batch_norm']})"
    args = factory_args(cfg, "model")
    return f"model {cfg['model']}" + (f" ({call_args(args)})" if args else "")


def load_model(state: dict, data: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a checkpoint ``state`` (its config and weights), in eval mode. ``data`` gives
    the input shape and class count. Weights that do not fit the configured model raise one-line ValueError."""
    cfg = resolve(PARAMS, state["config"])
    model = build(cfg, data, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ValueError(f"the weights do not fit {describe_model(cfg)} for input "
                         f"{tuple(data['input_shape'])} and {data['num_classes']} classes: {reason}") from None
    return model.to(device).eval()


def check_weights(state: dict, data: dict) -> None:
    """One-line ValueError when the weights of ``state`` do not fit its configured model on ``data``."""
    load_model(state, data)


def check_space(values: dict[str, list]) -> None:
    """Checks across keys, before anything runs: ``values`` maps each key a space sets to the values it can
    take. Each user model (``module:attr``) is imported and must be callable; ``model.NAME`` keys need every
    model to be a user model. Raises a one-line ValueError."""
    def given(key):
        return values.get(key, [PARAMS[key].default])

    weights = [w for w in given("pretrained_weights") if w]
    models = given("model")
    for ref in dict.fromkeys(m for m in models if is_ref(m)):
        import_factory(ref)
    args = sorted(k for k in values if is_factory_arg(PARAMS, k))
    builtins = [m for m in models if not is_ref(m)]
    if args and builtins:
        raise ValueError(builtin_takes_no_args(builtins[0], args[0].partition(".")[2]))
    for path in weights:
        usable = [m for m in models if m in PRETRAINED]
        if not usable:
            raise ValueError(f"pretrained_weights={path!r} but no model here takes them; they are for "
                             f"{', '.join(PRETRAINED)}")
        for name in usable:  # loads the file into the architecture: a mismatch stops the sweep here
            build_model(name, (3, 32, 32), 10, "relu", True, pretrained_weights=path)
    if any(m != "none" for m in given("mix")):
        for name in builtins:  # a user model is taken at its word: logits (fit checks its first batch)
            if getattr(MODELS.get(name), "outputs", "logits") != "logits":
                raise ValueError(f"mix needs a model that outputs logits; {name} outputs "
                                 f"{MODELS.get(name).outputs}: search it with mix=none")


def check_models(values: dict[str, list], data: dict) -> None:
    """Each user model of ``values`` built on the CPU and run on 2 training images of ``data`` before anything
    runs (``trainables.model_checks.check_user_models``); a one-line ValueError says what does not fit."""
    check_user_models(PARAMS, values, data)


def _logits(state: dict, x_uint8: np.ndarray, data: dict, device) -> torch.Tensor:
    device = pick_device(device or state["config"]["device"])
    model = load_model(state, data, device)
    x = DeviceData(x_uint8, np.zeros(len(x_uint8), np.int64), data["mean"], data["std"], device)
    batch = state["config"]["eval_batch_size"]
    with torch.inference_mode():
        parts = [model(x.normalize(x.x[s:s + batch])).float().cpu() for s in range(0, len(x), batch)]
    return torch.cat(parts) if parts else torch.empty(0, data["num_classes"])


def predict(state: dict, x_uint8: np.ndarray, data: dict, device=None) -> np.ndarray:
    """Class indices for uint8 images (N, C, H, W) from a checkpoint ``state`` as ``fit`` reports it."""
    return _logits(state, x_uint8, data, device).argmax(1).numpy()


def evaluate(state: dict, x_uint8: np.ndarray, y: np.ndarray, data: dict, device=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a checkpoint ``state`` on uint8 images and labels."""
    logits = _logits(state, x_uint8, data, device)
    target = torch.as_tensor(y, dtype=torch.long)
    return F.cross_entropy(logits, target).item(), int((logits.argmax(1) == target).sum()) / len(target)


def apply_new_hyperparameters(opt, schedule, old: dict, new: dict) -> None:
    """PBT restarts a trial from another's checkpoint with a mutated lr or weight
    decay; the optimizer state loaded from the checkpoint must not undo that."""
    for group in opt.param_groups:
        group["weight_decay"] = new["weight_decay"]
    if new["lr"] != old["lr"]:
        schedule.set_base_lr(new["lr"])


class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    A NaN (no validation split) never counts as an epoch without improvement."""

    def __init__(self, patience: int, min_delta: float, metric: str) -> None:
        self.patience, self.min_delta, self.sign = patience, min_delta, (1 if metric == "val_acc" else -1)
        self.best, self.bad = -math.inf, 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when the trial should stop now."""
        if self.patience <= 0 or not math.isfinite(value):
            return False
        if self.sign * value > self.best + self.min_delta:
            self.best, self.bad = self.sign * value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


def fit(config: dict, data: dict, reporter) -> None:
    """Train one configuration, reporting METRICS and the state to continue from every epoch.

    A NaN/inf training loss, or one above ``diverge_loss``, ends the trial after reporting
    that epoch with ``diverged: True`` and ``val_acc`` 0.0, so searchers rank it last. Early stopping
    ends it after reporting ``early_stopped: True``."""
    cfg = resolve(PARAMS, config)
    device = setup_device(cfg)
    seed_everything(cfg["seed"])
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    resident = cfg["cache"] != "host"

    train = DeviceData(data["x_train"], data["y_train"], data["mean"], data["std"], device, resident)
    val = DeviceData(data["x_val"], data["y_val"], data["mean"], data["std"], device, resident)
    ood = ood_sets(data, cfg, device, resident)
    epochs = min(cfg["epochs"], cfg["max_epochs"] or cfg["epochs"])
    precision = Precision(cfg, device)
    model = build(cfg, data).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["weight_decay"], cfg["momentum"])
    schedule = build_schedule(cfg["schedule"], opt, epochs, len(batch_starts(len(train), cfg["batch_size"])),
                              warmup_epochs=cfg["warmup_epochs"], step_size=cfg["step_size"],
                              gamma=cfg["step_gamma"], plateau_patience=cfg["plateau_patience"],
                              plateau_factor=cfg["plateau_factor"])
    stopper = EarlyStopping(cfg["early_stop_patience"], cfg["early_stop_min_delta"], cfg["early_stop_metric"])
    autoaugment = AutoAugment() if cfg["autoaugment"] else None
    n_params = sum(p.numel() for p in model.parameters())
    # The compiled module runs the steps; checkpoints hold the plain module's weights (no _orig_mod. prefix).
    step_model = compile_model(model, device) if cfg["compile"] else model
    diverge_bound = cfg["diverge_loss"] or math.inf

    first_epoch, samples_seen = 1, 0
    state = reporter.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state.get("early_stopping", stopper.state_dict()))
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        first_epoch = state["epoch"] + 1
        # A checkpoint from before samples_seen was kept: every epoch trained on the same number of samples.
        samples_seen = state.get("samples_seen", state["epoch"] * sum(
            min(cfg["batch_size"], len(train) - s) for s in batch_starts(len(train), cfg["batch_size"])))
        apply_new_hyperparameters(opt, schedule, state["config"], cfg)

    for epoch in range(first_epoch, epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = opt.param_groups[0]["lr"]
        t0, cpu0 = time.perf_counter(), time.process_time()
        train_loss, train_acc, seen = train_epoch(step_model, opt, schedule, train, cfg, gen, autoaugment, precision,
                                                  data["num_classes"])
        train_s = time.perf_counter() - t0
        samples_seen += seen
        diverged = not math.isfinite(train_loss) or train_loss > diverge_bound
        if diverged:
            val_loss, val_acc = float("nan"), 0.0
        else:
            val_loss, val_acc = evaluate_model(step_model, val, cfg["eval_batch_size"], precision)
            diverged = len(val) > 0 and not math.isfinite(val_loss)
        ood_acc = None
        if ood:
            ood_acc = float(np.mean([0.0 if diverged else evaluate_model(step_model, d, cfg["eval_batch_size"],
                                                                         precision)[1] for d in ood]))
        schedule.step_epoch(val_loss if math.isfinite(val_loss) else train_loss)
        watched = {"val_loss": val_loss, "val_acc": val_acc}[cfg["early_stop_metric"]]
        early_stopped = not diverged and epoch < epochs and stopper.update(watched)
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": 0.0 if diverged else train_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "epoch_time_s": time.perf_counter() - t0, "samples_per_s": seen / train_s,
            "peak_mem_mb": peak_memory_mb(device), "params": n_params, "cpu_s": time.process_time() - cpu0,
            "samples_seen": samples_seen, "diverged": diverged,
            "early_stopped": early_stopped, **({} if ood_acc is None else {"ood_acc": ood_acc}),
        }
        state = {
            "epoch": epoch, "config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(), "early_stopping": stopper.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "torch_rng": torch.get_rng_state(), "generator": gen.get_state(), "samples_seen": samples_seen,
        }
        reporter.report(metrics, state)
        if diverged or early_stopped:
            return
