"""The training paths on a real GPU (marker ``gpu``; ``python scripts/gpu_check.py`` runs them there).

Deselected in the CPU suite (``-m "not gpu"`` in pyproject.toml). ``scripts/gpu_check.py --device cpu --quick``
runs this same file on a CPU at tiny sizes (``TUNE_APP_CHECK_DEVICE=cpu``, ``TUNE_APP_CHECK_QUICK=1``), from the
CPU suite, so it cannot rot; only the out-of-memory case then needs a stand-in (a model that raises torch's
``OutOfMemoryError`` above a batch size, as a card too small would), everything else is the code a GPU runs.
Ray-free: the GPU machine has torch, torchvision, numpy, pandas, pyarrow and pytest only.
"""
from __future__ import annotations

import math
import os
import traceback

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.fake_datasets import class_images
from trainables import augment
from trainables import image_classifier as ic
from trainables.models import MODELS, build_model
from trainables.reporting import LocalReporter, StopTraining
from tune_app.cost.estimate import probe_samples, untouched_mb
from tune_app.rundir.tables import trial_status

pytestmark = pytest.mark.gpu
# A trial's process sets this (setup_device) before its first cuBLAS call; here the first test comes earlier.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

DEVICE = torch.device(os.environ.get("TUNE_APP_CHECK_DEVICE", "cuda"))
QUICK = os.environ.get("TUNE_APP_CHECK_QUICK") == "1"
N_TRAIN, N_VAL = (256, 64) if QUICK else (4096, 1024)
SMALL_MODEL = "digits_cnn" if QUICK else "vgg6"  # a CPU compiles VGG6 for minutes, trains it in fp16 slowly
# --quick on a CPU runs the code paths, not every model: the 50-layer ResNets and torchvision's take a CPU 40 s in bf16
QUICK_MODELS = [name for name in MODELS.names() if name not in ("resnet50", "tv_resnet18", "tv_resnet50")]
COMPILE_RTOL = 0.02  # compiled kernels round differently; two epochs' train loss agree to 2 %
AUTOAUGMENT_WITHIN = 0.99  # share of AutoAugment's uint8 values within one level of the CPU's (interpolation)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module", autouse=True)
def device_present():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("TUNE_APP_CHECK_DEVICE=cuda but torch sees no CUDA device; run these on a GPU machine, or set "
                    "TUNE_APP_CHECK_DEVICE=cpu")


def make_data(n_train: int = N_TRAIN, n_val: int = N_VAL, classes: int = 10, seed: int = 0) -> dict:
    """CIFAR-shaped, learnable (each class a bright block of its own), as Dataset.sweep_view() hands it to fit."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n_train + n_val) % classes).astype(np.int64)
    x = class_images(rng, y, 3, 32)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_val": x[n_train:], "y_val": y[n_train:],
            "mean": MEAN, "std": STD, "num_classes": classes, "input_shape": (3, 32, 32)}


DATA = make_data()


def config(**overrides) -> dict:
    return {"model": SMALL_MODEL, "batch_size": 64, "epochs": 2, "lr": 0.01, "optimizer": "sgd", "crop_padding": 4,
            "flip": True, "device": DEVICE.type, **overrides}


def train(cfg: dict, data: dict = DATA, state: dict | None = None, stop_after: int | None = None) -> LocalReporter:
    reporter = LocalReporter(state=state, stop_after=stop_after)
    try:
        ic.fit(cfg, data, reporter)
    except StopTraining:
        pass
    return reporter


def curve(reporter: LocalReporter) -> list[tuple]:
    return [(m["epoch"], m["train_loss"], m["train_acc"], m["val_loss"], m["val_acc"]) for m in reporter.history]


# --- every built-in model, bf16 autocast and channels_last -------------------------------------------------

@pytest.mark.parametrize("name", QUICK_MODELS if QUICK else MODELS.names())
def test_every_builtin_model_trains_a_step_in_bf16_and_channels_last(name):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10, "relu", True).to(DEVICE).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (4, 10)
    assert logits.dtype == torch.bfloat16, f"{name}: the last layer ran in {logits.dtype}, not under autocast"
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    assert math.isfinite(loss.item())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: a missing or NaN grad"
    assert sum(g.abs().sum().item() for g in grads) > 0
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


# --- determinism and resume -------------------------------------------------------------------------------

def test_deterministic_true_gives_the_same_metrics_twice():
    cfg = config(deterministic=True, autoaugment=True, cutout=8)
    first, second = curve(train(cfg)), curve(train(cfg))
    assert len(first) == 2
    assert first == second


def test_a_resumed_trial_continues_bit_exactly():
    """Deterministic kernels: with cuDNN's autotuner on, a resumed process may pick other kernels (last bits)."""
    cfg = config(epochs=3, deterministic=True, mix="cutmix_mixup")
    whole = train(cfg)
    cut = train(cfg, stop_after=2)
    assert [m["epoch"] for m in cut.history] == [1, 2]
    rest = train(cfg, state=cut.state)
    assert [m["epoch"] for m in rest.history] == [3]
    assert curve(rest) == curve(whole)[2:]
    for key, value in whole.state["model"].items():
        assert torch.equal(value, rest.state["model"][key]), key


# --- fp16 with its grad scaler, torch.compile ---------------------------------------------------------------

def test_fp16_trains_with_its_grad_scaler_and_resumes_it():
    cfg = config(amp="fp16", epochs=3, lr=0.02)
    reporter = train(cfg, stop_after=2)
    scaler = reporter.state["scaler"]
    assert scaler is not None and scaler["scale"] > 0
    rest = train(cfg, state=reporter.state)
    losses = [m["train_loss"] for m in reporter.history + rest.history]
    assert all(math.isfinite(v) for v in losses)
    assert rest.state["scaler"]["scale"] > 0
    if not QUICK:
        assert losses[-1] < losses[0], losses  # it learns (the blocks are easy)
        assert rest.history[-1]["val_acc"] > 0.25  # chance is 0.1; an H200 reached 0.47


def test_compile_trains_and_matches_eager():
    base = config(amp="off", channels_last="off", epochs=2, flip=False, crop_padding=0)
    eager, compiled = curve(train(base)), curve(train({**base, "compile": True}))
    for e, c in zip(eager, compiled):
        assert c[1] == pytest.approx(e[1], rel=COMPILE_RTOL, abs=1e-3), (e, c)  # train loss (abs: once it nears 0)
        assert abs(c[4] - e[4]) <= 0.05, (e, c)  # val accuracy within 5 points
    assert len(compiled) == 2


# --- out of memory ------------------------------------------------------------------------------------------

class OomAbove(torch.nn.Module):
    """A stand-in card for the CPU: raises torch's OutOfMemoryError for a batch above ``limit``."""

    def __init__(self, num_classes: int, input_shape, limit: int = 64) -> None:
        super().__init__()
        self.limit = limit
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} images (stand-in card)")
        return self.net(x)


def test_a_batch_too_big_for_the_card_ends_the_trial_as_oom():
    n = 8192 if DEVICE.type == "cuda" else 256
    data = make_data(n, 64)
    cfg = config(batch_size=n, epochs=1)
    if DEVICE.type == "cuda":
        # A real allocation failure: the card is capped at 2 GiB for this process; VGG6 on 8192 images needs more.
        index = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(2 * 2**30 / total, index)
    else:
        cfg["model"] = f"{__name__}:OomAbove"
    try:
        with pytest.raises(torch.OutOfMemoryError) as caught:
            train(cfg, data)
    finally:
        if DEVICE.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            torch.cuda.empty_cache()
    # What Ray keeps of a failed trial is the traceback's text; the run directory classifies it from that.
    error = "".join(traceback.format_exception(caught.value))
    assert trial_status({"error": error, "history": []}) == "oom"
    # The process is still usable: the next trial trains.
    after = train(config(epochs=1, batch_size=64), make_data(256, 64))
    assert math.isfinite(after.history[-1]["train_loss"])


# --- the memory probe behind --gpus-per-trial auto -----------------------------------------------------------

def test_the_probes_peak_memory_is_within_10_percent_of_a_trials():
    """--plan and --gpus-per-trial auto train a probe on a slice of the training set and add the untouched rest
    (tune_app.cost.estimate); a trial's own peak is torch.cuda.max_memory_allocated over a whole epoch."""
    n_train = 512 if QUICK else 45000
    data = make_data(n_train, 512)
    cfg = config(batch_size=256, epochs=1)
    n = probe_samples(n_train, 256)
    probe = train({**cfg, "epochs": 100}, {**data, "x_train": data["x_train"][:n], "y_train": data["y_train"][:n]},
                  stop_after=3)
    estimate = max(m["peak_mem_mb"] for m in probe.history) + untouched_mb(data["x_train"].nbytes, n, n_train)
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    trial = train(cfg, data).history[0]["peak_mem_mb"]
    if DEVICE.type == "cuda":
        assert trial == pytest.approx(torch.cuda.max_memory_allocated(DEVICE) / 2**20)
    print(f"probe estimate {estimate:.0f} MB, trial peak {trial:.0f} MB")
    assert estimate == pytest.approx(trial, rel=0.10)


# --- augmentation on the GPU equals the CPU's ------------------------------------------------------------------

class Draws(TorchFunctionMode):
    """Records the random tensors drawn from a generator (``generator=``), or replays recorded ones: a GPU's
    generator draws other numbers than a CPU's from the same seed, so the CPU replays the GPU's draws and
    the two must then compute the same images."""

    RANDOM = (torch.randint, torch.rand, torch.randn, torch.randperm)

    def __init__(self, replay: list | None = None) -> None:
        super().__init__()
        self.log = [] if replay is None else None
        self.replay = None if replay is None else iter(replay)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.RANDOM and kwargs.get("generator") is not None:
            if self.replay is not None:
                return next(self.replay).to(kwargs.get("device") or "cpu")
            out = func(*args, **kwargs)
            self.log.append(out.cpu())
            return out
        return func(*args, **kwargs)


def both(fn, x: torch.Tensor, y: torch.Tensor):
    """fn(x, y, gen) on DEVICE, then on the CPU with DEVICE's random draws; torch's global RNG (MixUp's lambda)
    seeded alike. Returns (device result, CPU result), each a tuple of CPU tensors."""
    def run(device, mode):
        torch.manual_seed(0)
        gen = torch.Generator(device=device).manual_seed(0)
        with mode:
            out = fn(x.to(device), y.to(device), gen)
        return tuple(t.cpu() for t in (out if isinstance(out, tuple) else (out,)))

    record = Draws()
    on_device = run(DEVICE, record)
    return on_device, run(torch.device("cpu"), Draws(replay=record.log))


def images(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    data = make_data(n, 0)
    return torch.tensor(data["x_train"]), torch.tensor(data["y_train"])


@pytest.mark.parametrize("name, fn", [
    ("crop+flip", lambda x, y, g: augment.random_crop_flip(x, 4, True, g)),
    ("cutout", lambda x, y, g: augment.cutout(x.float() / 255, 16, g)),
    ("mixup", lambda x, y, g: augment.mix_batch(x.float() / 255, y, 10, "mixup", 1.0, g)),
    ("cutmix", lambda x, y, g: augment.mix_batch(x.float() / 255, y, 10, "cutmix", 1.0, g)),
])
def test_augmentation_on_the_device_equals_the_cpu(name, fn):
    x, y = images()
    on_device, on_cpu = both(fn, x, y)
    for a, b in zip(on_device, on_cpu):
        if a.dtype == torch.uint8:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(on_device[0], x if on_device[0].dtype == torch.uint8 else x.float() / 255)  # it did act


def test_autoaugment_on_the_device_is_within_a_level_of_the_cpu():
    x, y = images(256)
    on_device, on_cpu = both(lambda x, y, g: augment.AutoAugment()(x, g), x, y)
    diff = (on_device[0].int() - on_cpu[0].int()).abs()
    within = (diff <= 1).float().mean().item()
    print(f"AutoAugment: {within:.4%} of values within one level, max difference {diff.max().item()}")
    assert within >= AUTOAUGMENT_WITHIN
    assert not torch.equal(on_device[0], x)
