import math
from unittest import mock

import pytest
import torch
from torchvision.transforms import v2

from trainables.augment import (
    CIFAR10_POLICY,
    SIGNED_OPS,
    AutoAugment,
    cutout,
    normalize,
    random_crop,
    random_crop_flip,
    random_flip,
)


def images(b=16, c=3, h=8, w=8):
    return torch.arange(b * c * h * w, dtype=torch.int32).reshape(b, c, h, w).to(torch.uint8)


def test_crop_without_padding_is_identity():
    x = images()
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(0)), x)


def test_crop_takes_a_window_of_the_zero_padded_image():
    x, pad = images(), 2
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, f"image {i} is not a window of its padded self"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets differ per image


def test_crop_output_is_contiguous_nchw():
    x = images()
    for out in (random_crop(x, 2, torch.Generator().manual_seed(0)),
                random_crop_flip(x, 2, True, torch.Generator().manual_seed(0)),
                random_crop_flip(x, 2, False, torch.Generator().manual_seed(0))):
        assert out.shape == x.shape and out.is_contiguous()
    # a channels-last batch comes out as plain NCHW too
    last = x.contiguous(memory_format=torch.channels_last)
    assert random_crop(last, 2, torch.Generator().manual_seed(0)).is_contiguous()
    assert random_crop_flip(last, 2, True, torch.Generator().manual_seed(0)).is_contiguous()


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (9, 1, 28, 28), (5, 3, 7, 12)])
@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("flip", [True, False])
def test_fused_crop_flip_is_crop_then_flip_bit_for_bit(shape, padding, flip):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        ref = random_crop(x, padding, gen)
        ref = random_flip(ref, gen) if flip else ref
        fused_gen = torch.Generator().manual_seed(seed)
        fused = random_crop_flip(x, padding, flip, fused_gen)
        assert fused.dtype == x.dtype and torch.equal(fused, ref)
        assert torch.equal(fused_gen.get_state(), gen.get_state())  # the same draws, so what follows is the same too


def test_fused_crop_flip_mirrors_and_crops():
    x, pad = images(b=200), 2
    out = random_crop_flip(x, pad, True, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    mirrored = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        kept = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert kept or flipped
        mirrored += flipped and not kept
    assert 70 < mirrored < 130


def test_normalize_is_float_minus_mean_over_std_bit_for_bit():
    x = images()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, -1, 1, 1) * 255
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, -1, 1, 1) * 255
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, (x.float() - mean) / std)
    assert x.dtype == torch.uint8 and torch.equal(x, images())  # the input is left alone
    f = x.float()
    assert torch.equal(normalize(f, mean, std), (f - mean) / std) and torch.equal(f, x.float())


def test_flip_mirrors_about_half_and_leaves_the_rest():
    x = images(b=200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 16, 16)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 16).all()
    assert (zeros == 16).sum() > 20  # squares fully inside the image are whole
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square on every channel


def test_augmentations_repeat_with_the_same_seed():
    x = images()
    a = random_flip(random_crop(x, 2, torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    b = random_flip(random_crop(x, 2, torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


def test_autoaugment_keeps_uint8_shape_and_changes_images():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = AutoAugment()(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = sum(not torch.equal(o, i) for o, i in zip(out, x))
    assert changed > 16


# ---------------------------------------------------------------------------- batched AutoAugment

def torchvision_autoaugment():
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)


def test_the_policy_and_signed_operations_are_torchvisions():
    tv = torchvision_autoaugment()
    assert tuple(tv._policies) == CIFAR10_POLICY
    assert {op for op, (_, signed) in tv._AUGMENTATION_SPACE.items() if signed} == SIGNED_OPS


def torchvision_with_draws(tv, img, plan, i):
    """torchvision's AutoAugment on one image, its torch.randint and torch.rand answering with image i's draws of
    ``plan``, in the order torchvision draws (sub-policy; then per operation: apply?, and sign if it applies and is
    signed). Returns the image and the (operation, magnitude) calls torchvision made."""
    sub = int(plan.policy[i])
    draws = []
    for k, (op, p, bin) in enumerate(CIFAR10_POLICY[sub]):
        draws.append(plan.apply_u[i, k])
        if plan.apply_u[i, k] <= p and bin is not None and tv._AUGMENTATION_SPACE[op][1]:
            draws.append(plan.sign_u[i, k])
    answers = iter(draws)
    calls = []
    apply_op = tv._apply_image_or_video_transform

    def recorded(image, transform_id, magnitude, **kw):
        calls.append((transform_id, magnitude))
        return apply_op(image, transform_id, magnitude, **kw)

    with mock.patch("torch.randint", lambda *a, **k: torch.tensor(sub)), \
            mock.patch("torch.rand", lambda *a, **k: next(answers)), \
            mock.patch.object(tv, "_apply_image_or_video_transform", recorded):
        out = tv(img)
    assert next(answers, None) is None, "torchvision drew fewer numbers than the plan holds for the image"
    return out, calls


@pytest.mark.parametrize("shape", [(400, 3, 32, 32), (60, 1, 12, 10)])
def test_each_image_is_torchvisions_result_of_its_own_draws(shape):
    """The batched operations give every image what torchvision's v2 AutoAugment gives that image alone with the
    same draws: the same sub-policy, operations, signed magnitudes and output bits."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    x[len(x) // 2:] = x[len(x) // 2:] // 4 + 90  # low-contrast images: AutoContrast and Equalize have work to do
    aa, tv = AutoAugment(), torchvision_autoaugment()
    plan = aa.plan(len(x), gen)
    out = aa.apply(x, plan)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.is_contiguous()
    steps = aa.steps(plan, shape[2], shape[3])
    ops_seen = set()
    for i in range(len(x)):
        ref, calls = torchvision_with_draws(tv, x[i], plan, i)
        assert calls == [step for step in steps[i] if step is not None], i
        assert torch.equal(out[i], ref), (i, calls)
        ops_seen.update(op for op, _ in calls)
    if shape[0] >= 400:
        assert ops_seen == {op for sub in CIFAR10_POLICY for op, p, _ in sub if p > 0}  # every operation was checked
    assert sum(not torch.equal(o, i) for o, i in zip(out, x)) > len(x) // 3  # Color leaves 1 channel alone


def test_subpolicies_are_uniform_and_operations_apply_with_their_probability():
    n = 25 * 800
    aa = AutoAugment()
    plan = aa.plan(n, torch.Generator().manual_seed(1))
    counts = torch.bincount(plan.policy, minlength=25).double()
    assert counts.min() > 0 and len(counts) == 25
    expected = n / 25
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 51.18, chi2  # chi-square, 24 degrees of freedom: its 99.9% quantile
    steps = aa.steps(plan, 32, 32)
    signs = [math.copysign(1, m) for row in steps for step in row if step is not None and step[0] in SIGNED_OPS
             for m in [step[1]]]
    assert abs(signs.count(-1) / len(signs) - 0.5) <= 5 * math.sqrt(0.25 / len(signs)), len(signs)  # all together
    for sub, ops in enumerate(CIFAR10_POLICY):
        rows = [steps[i] for i in torch.nonzero(plan.policy == sub).flatten().tolist()]
        for k, (op, p, bin) in enumerate(ops):
            applied = [row[k] for row in rows if row[k] is not None]
            share = len(applied) / len(rows)
            assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / len(rows)) + 1e-9, (sub, k, share, p)
            if op in SIGNED_OPS and bin is not None and applied:
                negative = sum(math.copysign(1, m) < 0 for _, m in applied) / len(applied)  # bin 0: -0.0
                assert abs(negative - 0.5) <= 5 * math.sqrt(0.25 / len(applied)), (sub, k, negative)


def test_the_outcomes_are_distributed_as_torchvisions():
    """What torchvision's per-image AutoAugment does (its own draws, recorded), against the plan's: the share of
    images that get each (step, operation, signed magnitude), or nothing at a step, agrees within 5 standard
    deviations."""
    n = 6000
    tv = torchvision_autoaugment()
    recorded = []
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)

    def record(image, transform_id, magnitude, **kw):
        recorded[-1].append((transform_id, magnitude))
        return image

    torch.manual_seed(2)
    with mock.patch.object(tv, "_apply_image_or_video_transform", record):
        for _ in range(n):
            recorded.append([])
            tv(img)
    aa = AutoAugment()
    ours = [[step for step in row if step is not None] for row in aa.steps(aa.plan(n, torch.Generator().manual_seed(3)),
                                                                          32, 32)]

    def shares(rows):
        counts = {}
        for row in rows:
            for key in [(len(row),)] + [(k, *step) for k, step in enumerate(row)]:
                counts[key] = counts.get(key, 0) + 1
        return {key: c / len(rows) for key, c in counts.items()}

    theirs, mine = shares(recorded), shares(ours)
    # an operation applied at the first step and not the second shows as step 0 in both: the keys line up
    for key in set(theirs) | set(mine):
        a, b = theirs.get(key, 0.0), mine.get(key, 0.0)
        p = (a + b) / 2
        assert abs(a - b) <= 5 * math.sqrt(p * (1 - p) * 2 / n) + 1e-9, (key, a, b)


def test_autoaugment_repeats_with_the_seed_from_a_generator_or_torchs_rng():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aa = AutoAugment()
    a = aa(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, aa(x, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, aa(x, torch.Generator().manual_seed(5)))
    torch.manual_seed(6)
    b = aa(x)
    state = torch.get_rng_state()
    torch.manual_seed(6)
    assert torch.equal(b, aa(x))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG moves the same way: resuming from it works
    torch.manual_seed(6)
    aa(x, torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(6).get_state())  # a generator's draws
    # leave torch's RNG alone


def test_autoaugment_refuses_float_images_and_a_plan_for_another_batch():
    aa = AutoAugment()
    with pytest.raises(TypeError, match="uint8"):
        aa(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="a plan for 3 images, a batch of 2"):
        aa.apply(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), aa.plan(3))
