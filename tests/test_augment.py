import torch

from trainables.augment import AutoAugment, cutout, random_crop, random_flip


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
