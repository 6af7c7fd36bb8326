"""tune_app's fast path (uint8 data on the device, batched tensor augmentations, per-batch normalization) against
the reference it replaces: torchvision's per-image transforms, DeVries & Taylor's Cutout, and a plain DataLoader
training loop. Correctness only, never timing; fixed seeds, so every statistical bound is checked on the same
draws each run (the bounds are several standard deviations wide)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchvision import transforms as T

from trainables import image_classifier as ic
from trainables.augment import cutout, random_crop, random_crop_flip, random_flip
from trainables.device_loop import DeviceData, augment
from trainables.models import build_model
from trainables.params import resolve
from trainables.reporting import LocalReporter, StopTraining

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PAD = 4


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: both paths run in this process with the same count, and two threads on a busy 2-core
    machine can run ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) uint8 noise: no image equals another window of itself or its mirror image."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def fast_config(**over) -> dict:
    return resolve(ic.PARAMS, {"crop_padding": PAD, "flip": True, **over})


def crop_offsets(out: torch.Tensor, x: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """(n, 2) offsets (dy, dx) in [0, 2 pad] at which each crop equals its zero-padded original exactly.

    The candidates come from a 4x4 patch of the crop's interior (inside the original image at every offset), which
    in noise images matches at one offset only; then the whole crop is compared with that window."""
    n, _, h, w = x.shape
    side = 2 * pad + 1
    patch = out[:, :, pad:pad + 4, pad:pad + 4]
    hits = torch.zeros(n, side, side, dtype=torch.bool)
    for dy in range(side):
        for dx in range(side):
            hits[:, dy, dx] = (patch == x[:, :, dy:dy + 4, dx:dx + 4]).flatten(1).all(1)
    assert (hits.flatten(1).sum(1) == 1).all(), "a crop's interior is not at exactly one offset of its image"
    flat = hits.flatten(1).float().argmax(1)
    dy, dx = flat // side, flat % side
    windows = F.pad(x, (pad,) * 4).unfold(2, h, 1).unfold(3, w, 1)  # (n, C, side, side, h, w), a view
    assert torch.equal(windows[torch.arange(n), :, dy, dx], out), "a crop differs from its padded image's window"
    return torch.stack([dy, dx], 1)


def torchvision_crops(x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    crop = T.RandomCrop(32, padding=PAD, fill=0, padding_mode="constant")
    return torch.stack([crop(img) for img in x])


# ---------------------------------------------------------------------------- the whole batch transform

def test_augmented_batch_has_torchvisions_shape_dtype_and_value_range():
    x = random_images(256)
    data = DeviceData(x.numpy(), np.zeros(len(x), np.int64), MEAN, STD, torch.device("cpu"))
    fast = augment(x, data, fast_config(), torch.Generator().manual_seed(0), None)
    torch.manual_seed(0)
    reference_tf = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(MEAN, STD)])
    ref = torch.stack([reference_tf(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in x])

    assert fast.shape == ref.shape == (256, 3, 32, 32)
    assert fast.dtype == ref.dtype == torch.float32
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    for out in (fast, ref):
        assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
        # every value is one of the 256 normalized levels of its channel
        levels = torch.round((out * std + mean) * 255)
        assert torch.allclose((levels / 255 - mean) / std, out, atol=1e-5)
        # zero padding shows as pixel value 0, i.e. -mean/std after normalization
        assert ((levels == 0).all(1)).float().mean() > 0.05
    # both are normalized the same way: per-channel mean and std of the batch agree
    assert torch.allclose(fast.mean((0, 2, 3)), ref.mean((0, 2, 3)), atol=0.05)  # about 4 standard deviations
    assert torch.allclose(fast.std((0, 2, 3)), ref.std((0, 2, 3)), atol=0.05)


def test_normalization_equals_to_tensor_then_normalize():
    x = random_images(64)
    data = DeviceData(x.numpy(), np.zeros(len(x), np.int64), MEAN, STD, torch.device("cpu"))
    ref = T.Normalize(MEAN, STD)(x.float().div(255))  # ToTensor's scaling, then Normalize
    assert torch.allclose(data.normalize(x), ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- crop

def test_crop_keeps_uint8_shape_and_values_like_torchvision():
    x = random_images(128)
    fast = random_crop(x, PAD, torch.Generator().manual_seed(0))
    ref = torchvision_crops(x, 0)
    assert fast.shape == ref.shape == x.shape
    assert fast.dtype == ref.dtype == torch.uint8
    for out in (fast, ref):  # only the image's own values and the zero fill
        assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0}


def test_every_crop_is_the_padded_image_at_an_offset_within_twice_the_padding_uniformly_like_torchvision():
    n = 81 * 100
    x = random_images(n, seed=1)
    fast = crop_offsets(random_crop(x, PAD, torch.Generator().manual_seed(2)), x)
    ref = crop_offsets(torchvision_crops(x, 3), x)
    expected = n / 81
    histograms = []
    for offsets in (fast, ref):
        assert offsets.min() >= 0 and offsets.max() <= 2 * PAD
        counts = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81).double()
        assert (counts > 0).all()  # all 81 offsets occur
        assert (counts - expected).abs().max() <= 0.5 * expected  # each within 5 standard deviations
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 124.8, chi2  # chi-square, 80 degrees of freedom: its 99.9% quantile
        histograms.append(counts / n)
    total_variation = float((histograms[0] - histograms[1]).abs().sum() / 2)
    assert total_variation < 0.1, total_variation  # two samples of one uniform: about 0.056 expected


def test_crop_offsets_differ_per_image_and_repeat_with_the_seed():
    x = random_images(64)
    a = random_crop(x, PAD, torch.Generator().manual_seed(7))
    assert torch.equal(a, random_crop(x, PAD, torch.Generator().manual_seed(7)))
    assert len({tuple(o) for o in crop_offsets(a, x).tolist()}) > 20


def permuted_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """tune_app's first random_crop: advanced indexing of the NHWC-permuted padded batch, permuted back (so its output
    had channels-last strides); kept here to show that the values, and so trials' results, did not change."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def test_crop_gives_the_first_implementations_values_as_contiguous_nchw():
    x = random_images(256)
    old = permuted_crop(x, PAD, torch.Generator().manual_seed(9))
    new = random_crop(x, PAD, torch.Generator().manual_seed(9))
    assert torch.equal(new, old) and new.is_contiguous() and not old.is_contiguous()


def test_the_batch_transform_is_crop_flip_normalize_bit_for_bit_and_contiguous():
    """augment() does crop and flip in one gather and normalizes in place: the same floats as the two steps and
    DeviceData.normalize, and the generator left in the same state (Cutout and MixUp draw the same afterwards)."""
    x = random_images(256)
    data = DeviceData(x.numpy(), np.zeros(len(x), np.int64), MEAN, STD, torch.device("cpu"))
    for cfg in (fast_config(), fast_config(flip=False), fast_config(crop_padding=0), fast_config(cutout=8)):
        gen = torch.Generator().manual_seed(11)
        fast = augment(x, data, cfg, gen, None)
        ref_gen = torch.Generator().manual_seed(11)
        ref = random_crop(x, cfg["crop_padding"], ref_gen)
        ref = data.normalize(random_flip(ref, ref_gen) if cfg["flip"] else ref)
        ref = cutout(ref, cfg["cutout"], ref_gen)
        assert torch.equal(fast, ref) and fast.is_contiguous() and fast.dtype == torch.float32
        assert torch.equal(gen.get_state(), ref_gen.get_state())
    first = torch.Generator().manual_seed(1)
    assert torch.equal(random_crop_flip(x, PAD, True, torch.Generator().manual_seed(1)),
                       random_flip(permuted_crop(x, PAD, first), first))


# ---------------------------------------------------------------------------- flip

@pytest.mark.parametrize("path", ["tune_app", "torchvision"])
def test_about_half_the_images_are_mirrored_and_the_rest_kept(path):
    n = 4000
    x = random_images(n, seed=4, size=8)
    if path == "tune_app":
        out = random_flip(x, torch.Generator().manual_seed(5))
    else:
        torch.manual_seed(5)
        flip = T.RandomHorizontalFlip()
        out = torch.stack([flip(img) for img in x])
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert not (mirrored & kept).any() and (mirrored | kept).all()
    fraction = mirrored.double().mean().item()
    assert abs(fraction - 0.5) < 4 * math.sqrt(0.25 / n), fraction  # 4 standard deviations: +-0.032


# ---------------------------------------------------------------------------- cutout

def devries_taylor_cutout(img: np.ndarray, length: int, rng: np.random.RandomState) -> np.ndarray:
    """Cutout as DeVries & Taylor's reference code (uoguelph-mlrg/Cutout, util/cutout.py) does it, one hole:
    a centre anywhere in the image, a length x length square around it clipped at the borders, zeroed."""
    h, w = img.shape[1:]
    mask = np.ones((h, w), np.float32)
    y, x = rng.randint(h), rng.randint(w)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * mask[None]


def expected_clipped_side(size: int, length: int, start_offset: int) -> float:
    """Mean length of [c + start_offset, c + start_offset + length) clipped to [0, size), c uniform in 0..size-1."""
    return sum(min(c + start_offset + length, size) - max(c + start_offset, 0) for c in range(size)) / size


def zero_masks(out: torch.Tensor) -> torch.Tensor:
    """(n, H, W) zeroed pixels; checks that every channel has the same mask and that it is one rectangle."""
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)), "the channels differ"
    zero = zero[:, 0]
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :]), "a mask is not a rectangle"
    for line in (rows, cols):  # contiguous: the zeroed rows (columns) form one run
        idx = torch.arange(line.shape[1])
        first = torch.where(line, idx, line.shape[1]).min(1).values
        last = torch.where(line, idx, -1).max(1).values
        assert torch.equal(line.sum(1), (last - first + 1).clamp(min=0))
    return zero


@pytest.mark.parametrize("length", [16, 8])  # the papers' CIFAR-10 and CIFAR-100 lengths
def test_cutout_zeroes_one_clipped_square_whose_mean_area_matches_devries_and_taylor(length):
    n, size = 4096, 32
    ones = torch.ones(n, 3, size, size)
    fast = zero_masks(cutout(ones, length, torch.Generator().manual_seed(length)))
    rng = np.random.RandomState(length)
    ref = zero_masks(torch.from_numpy(np.stack([devries_taylor_cutout(img, length, rng) for img in ones.numpy()])))

    expected_area = expected_clipped_side(size, length, -(length // 2)) ** 2  # 196 for 16, 56.25 for 8
    full = ((size - length + 1) / size) ** 2  # share of squares entirely inside the image
    for masks in (fast, ref):
        areas = masks.flatten(1).sum(1).double()
        assert areas.max() == length * length and areas.min() >= (length // 2) ** 2
        assert abs(areas.mean().item() - expected_area) < 0.03 * expected_area, (areas.mean(), expected_area)
        assert abs((areas == length * length).double().mean().item() - full) < 0.03
    # the centres are uniform over the image: the zeroed share of every pixel row is the same in both
    assert torch.allclose(fast.double().mean((0, 2)), ref.double().mean((0, 2)), atol=0.03)


def test_cutout_of_an_odd_length_zeroes_the_whole_length_as_documented():
    """DeVries & Taylor's code cuts (length - 1)^2 for an odd length (y - length//2 to y + length//2); tune_app's
    cutout cuts the documented length x length square (they only differ for odd lengths)."""
    n, size, length = 4096, 32, 5
    masks = zero_masks(cutout(torch.ones(n, 3, size, size), length, torch.Generator().manual_seed(0)))
    areas = masks.flatten(1).sum(1).double()
    assert areas.max() == 25
    expected = expected_clipped_side(size, length, -(length // 2)) ** 2
    assert abs(areas.mean().item() - expected) < 0.03 * expected


# ---------------------------------------------------------------------------- a trial's metrics

def learnable_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with one white row whose place says the class: a small CNN gets part of the way in two
    epochs (validation accuracy from about 0.2 to 0.75), so neither the losses nor the accuracies saturate."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 200, size=(n, 3, 32, 32), dtype=np.uint8)
    for c in range(10):
        x[y == c, c % 3, 3 * c, :] = 255
    return x, y.astype(np.int64)


class SamePermutation(Sampler):
    """Yields the permutation train_epoch draws: torch.randperm from a generator seeded with the trial's seed."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.gen).tolist())


def reference_trial(data: dict, cfg: dict, seed: int) -> list[dict]:
    """The same training as a textbook loop: DataLoader over a TensorDataset, ToTensor's scaling and
    torchvision's Normalize per batch, the model and SGD built the same way."""
    torch.manual_seed(seed)
    model = build_model(cfg["model"], data["input_shape"], data["num_classes"], cfg["activation"], cfg["batch_norm"])
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=0.0)
    normalize = T.Normalize(data["mean"], data["std"])
    train = DataLoader(TensorDataset(torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])),
                       batch_size=cfg["batch_size"], sampler=SamePermutation(len(data["y_train"]), seed))
    val = DataLoader(TensorDataset(torch.from_numpy(data["x_val"]), torch.from_numpy(data["y_val"])),
                     batch_size=cfg["eval_batch_size"], shuffle=False)
    history = []
    for _ in range(cfg["epochs"]):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train:
            logits = model(normalize(x.float().div(255)))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        model.eval()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for x, y in val:
                logits = model(normalize(x.float().div(255)))
                val_loss += F.cross_entropy(logits, y, reduction="sum").item()
                val_correct += int((logits.argmax(1) == y).sum())
        history.append({"train_loss": loss_sum / seen, "train_acc": correct / seen,
                        "val_loss": val_loss / len(val.dataset), "val_acc": val_correct / len(val.dataset)})
    return history


def test_a_trials_metrics_match_a_plain_dataloader_loop_for_the_same_seed():
    x, y = learnable_data(800, seed=0)
    data = {"name": "random", "x_train": x[:600], "y_train": y[:600], "x_val": x[600:], "y_val": y[600:],
            "mean": MEAN, "std": STD, "num_classes": 10, "input_shape": (3, 32, 32)}
    config = {"model": "small_cnn2", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 64,
              "epochs": 2, "eval_batch_size": 128, "seed": 3, "device": "cpu"}  # no random augmentation
    reporter = LocalReporter()
    ic.fit(config, data, reporter)
    cfg = resolve(ic.PARAMS, config)
    reference = reference_trial(data, cfg, seed=3)

    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert len(reporter.history) == len(reference) == 2
    for fast, ref in zip(reporter.history, reference):
        for key in keys:
            # float32 rounding: the two normalise the images in different orders of operations, and a CPU's
            # kernels differ (2.2e-5 in val_loss on one machine); another seed moves them by more than 1e-3
            assert abs(fast[key] - ref[key]) <= 1e-4, (key, fast[key], ref[key])
    # the trial learned something, so the match is not one of two untrained models
    assert reference[1]["train_loss"] < reference[0]["train_loss"] - 0.3
    assert reference[0]["val_acc"] < 0.5 < reference[1]["val_acc"] < 0.95
    # and another seed (init and order) gives other metrics: the comparison can fail
    other = reference_trial(data, cfg, seed=4)
    assert max(abs(other[1][k] - reference[1][k]) for k in keys) > 1e-3


# ---------------------------------------------------------------------------- AutoAugment in a trial

def test_a_trial_with_autoaugment_repeats_and_resumes_exactly(digits):
    """Batched AutoAugment draws from torch's global RNG, which the trainable seeds and checkpoints: the same seed
    gives the same metrics, and a trial stopped after its first epoch and resumed gives the rest of them."""
    config = {"dataset": "digits", "model": "digits_cnn", "optimizer": "adam", "lr": 3e-3, "batch_size": 64,
              "epochs": 3, "seed": 1, "crop_padding": 1, "autoaugment": True}
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    full = LocalReporter()
    ic.fit(config, digits.sweep_view(), full)
    again = LocalReporter()
    ic.fit(config, digits.sweep_view(), again)
    assert [[h[k] for k in keys] for h in full.history] == [[h[k] for k in keys] for h in again.history]
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        ic.fit(config, digits.sweep_view(), first)
    rest = LocalReporter(state=first.state)
    ic.fit(config, digits.sweep_view(), rest)
    assert [h["epoch"] for h in rest.history] == [2, 3]
    assert [[h[k] for k in keys] for h in full.history[1:]] == [[h[k] for k in keys] for h in rest.history]
    plain = LocalReporter()
    ic.fit({**config, "autoaugment": False}, digits.sweep_view(), plain)
    assert plain.history[-1]["train_loss"] != full.history[-1]["train_loss"]  # AutoAugment did something
