import pytest
import torch

from trainables.augment import AutoAugment, cutout, normalize, random_crop, random_crop_flip, random_flip


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
