"""Float augmentations (rotation, color jitter, blur, noise) and batch mixing (MixUp, CutMix):
the same checks for every op, then each op's own geometry or statistics with real numbers."""
import math

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainables.augment import (
    MIX_MODES,
    adjust_colors,
    blur,
    color_jitter,
    cutmix,
    gaussian_blur,
    gaussian_noise,
    mix_batch,
    mixup,
    random_rotation,
    rotate,
)

# Each random float op at strength s: op(x, s, gen).
OPS = {"rotation": random_rotation, "color_jitter": color_jitter, "gaussian_blur": gaussian_blur,
       "gaussian_noise": gaussian_noise}
STRONG = {"rotation": 45.0, "color_jitter": 0.9, "gaussian_blur": 2.0, "gaussian_noise": 0.3}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(b=8, c=3, h=12, w=10, seed=0):
    return torch.rand(b, c, h, w, generator=gen(seed))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_strength_zero_returns_the_input(name, c):
    x = images(c=c)
    assert OPS[name](x, 0.0, gen()) is x


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_output_is_a_float_image_in_0_1_and_changed(name, c):
    x = images(c=c)
    out = OPS[name](x, STRONG[name], gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", OPS)
def test_same_seed_same_output_other_seed_other_output(name):
    x = images()
    a, b, c = (OPS[name](x, STRONG[name], gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_90_degrees_turns_pixels_counter_clockwise():
    x = torch.zeros(2, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right middle
    x[1, 0, 0, 0] = 1.0  # top left
    out = rotate(x, torch.tensor([90.0, 90.0]))
    expected = torch.zeros_like(x)
    expected[0, 0, 0, 2] = 1.0  # -> top middle
    expected[1, 0, 4, 0] = 1.0  # -> bottom left
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_180_degrees_is_both_flips():
    x = images(h=9, w=6)
    torch.testing.assert_close(rotate(x, torch.full((8,), 180.0)), x.flip(2, 3), atol=1e-5, rtol=0)


def test_rotation_matches_torchvision_on_a_non_square_image():
    x = images(b=3, h=7, w=10)
    angles = torch.tensor([30.0, -45.0, 120.0])
    ref = torch.stack([TF.rotate(img, a.item(), interpolation=InterpolationMode.BILINEAR)
                       for img, a in zip(x, angles)])
    torch.testing.assert_close(rotate(x, angles), ref, atol=1e-5, rtol=0)


def test_random_rotation_draws_each_angle_within_the_range():
    x = images(b=64)
    angles = (torch.rand(64, generator=gen(3)) * 2 - 1) * 20  # the draw random_rotation makes
    assert angles.abs().max() <= 20 and angles.std() > 5
    torch.testing.assert_close(random_rotation(x, 20, gen(3)), rotate(x, angles))


def test_noise_has_the_asked_std_on_mid_gray():
    x = torch.full((16, 3, 64, 64), 0.5)
    diff = gaussian_noise(x, 0.1, gen()) - x
    assert diff.std().item() == pytest.approx(0.1, rel=0.03)
    assert abs(diff.mean().item()) < 0.002


def test_blur_spreads_a_bright_pixel_into_the_normalized_gaussian_kernel():
    sigma, radius = 1.5, 5  # kernel 2 * ceil(3 sigma) + 1 = 11 wide
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(d[:, None] ** 2 + d[None] ** 2) / (2 * sigma**2))
    expected = torch.zeros(15, 15)
    expected[2:13, 2:13] = kernel / kernel.sum()
    torch.testing.assert_close(blur(x, sigma)[0, 0], expected, atol=1e-7, rtol=1e-5)


def test_blur_matches_torchvision_with_reflect_padding():
    x = images(h=12, w=10)
    torch.testing.assert_close(blur(x, 1.2), TF.gaussian_blur(x, [9, 9], [1.2, 1.2]), atol=1e-5, rtol=0)


def test_gaussian_blur_blurs_about_half_the_images_and_leaves_the_rest():
    x = images(b=200, h=8, w=8)
    out = gaussian_blur(x, 1.0, gen())
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert 70 < int((~kept).sum()) < 130
    # Blurred images lose pixel-to-pixel variation.
    assert (out[~kept].diff(dim=3).abs().mean() < 0.8 * x[~kept].diff(dim=3).abs().mean())


def test_color_jitter_scales_a_gray_image_by_a_brightness_factor_within_the_strength():
    s, v = 0.5, 0.4
    x = torch.full((200, 3, 4, 4), v)  # contrast and saturation leave a flat gray image alone
    out = color_jitter(x, s, gen())
    factors = out.mean(dim=(1, 2, 3)) / v
    assert torch.allclose(out, factors[:, None, None, None] * v)  # still flat and gray
    assert factors.min() >= 1 - s and factors.max() <= 1 + s
    assert factors.min() < 0.6 and factors.max() > 1.4  # the range is used


@pytest.mark.parametrize("c", [1, 3])
def test_adjust_colors_follows_torchvisions_formulas(c):
    x = images(b=3, c=c)
    b, k, s = torch.tensor([0.7, 1.3, 1.0]), torch.tensor([1.2, 0.6, 1.5]), torch.tensor([0.5, 1.4, 0.0])
    ref = torch.stack([TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, bi), ki), si)
                       for img, bi, ki, si in zip(x, b.tolist(), k.tolist(), s.tolist())])
    # torchvision weighs red 0.2989, here 0.299: gray differs by up to 1e-4, scaled by the factors.
    torch.testing.assert_close(adjust_colors(x, b, k, s), ref, atol=5e-4, rtol=0)


def distinct_batch(b=16, h=8, w=8):
    """Image i is all i; label i of b classes: every pixel and target says where it came from."""
    return torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, h, w).clone(), torch.arange(b)


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_alpha_zero_gives_the_images_and_one_hot_targets(mix):
    x, y = distinct_batch()
    out, targets, lam = mix(x, y, 16, 0.0, gen())
    assert out is x and lam == 1.0 and torch.equal(targets, torch.eye(16))


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_target_rows_are_distributions_and_repeat_with_the_seeds(mix):
    x, y = distinct_batch()
    torch.manual_seed(0)
    out, targets, _ = mix(x, y, 20, 1.0, gen())
    torch.manual_seed(0)
    again, _, _ = mix(x, y, 20, 1.0, gen())
    assert targets.shape == (16, 20) and torch.allclose(targets.sum(1), torch.ones(16)) and (targets >= 0).all()
    assert torch.equal(out, again)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_blends_each_image_with_its_partner(seed):
    x, y = distinct_batch()
    torch.manual_seed(seed)
    out, targets, lam = mixup(x, y, 16, 0.4, gen(seed))
    perm = torch.randperm(16, generator=gen(seed))  # mixup's first draw from gen
    assert 0 < lam < 1
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(targets, lam * torch.eye(16) + (1 - lam) * torch.eye(16)[perm])


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lam_is_the_fraction_of_pixels_kept(seed):
    x, y = distinct_batch(h=10, w=12)
    torch.manual_seed(seed)
    out, targets, lam = cutmix(x, y, 16, 1.0, gen(seed))
    perm = torch.randperm(16, generator=gen(seed))
    moved = perm != torch.arange(16)
    kept = (out == x)[moved].float().mean(dim=(1, 2, 3))
    pasted = (out == x[perm])[moved].float().mean(dim=(1, 2, 3))
    assert torch.allclose(kept, torch.full_like(kept, lam)) and torch.allclose(pasted, 1 - kept)
    torch.testing.assert_close(targets, lam * torch.eye(16) + (1 - lam) * torch.eye(16)[perm])


def test_cutmix_box_is_clipped_at_the_border_and_lam_follows():
    """Over many draws some boxes are cut by the border: lam then exceeds 1 - the drawn box's area."""
    x, y = distinct_batch(h=10, w=10)
    torch.manual_seed(0)
    lams = [cutmix(x, y, 16, 1.0, gen(s))[2] for s in range(60)]
    assert len(set(lams)) > 10 and all(0 <= lam <= 1 for lam in lams)


def test_mix_batch_none_gives_one_hot_targets():
    x, y = distinct_batch()
    out, targets = mix_batch(x, y, 16, "none", 1.0, gen())
    assert out is x and torch.equal(targets, torch.eye(16))


def test_mix_batch_unknown_mode_lists_the_modes():
    x, y = distinct_batch()
    with pytest.raises(ValueError) as e:
        mix_batch(x, y, 16, "mosaic", 1.0, gen())
    assert str(e.value) == f"unknown mix mode 'mosaic'; known: {', '.join(MIX_MODES)}"


def test_cutmix_mixup_uses_both_over_many_batches():
    x, y = distinct_batch()
    torch.manual_seed(0)
    g = gen()
    kinds = []
    for _ in range(40):
        out, _ = mix_batch(x, y, 16, "cutmix_mixup", 1.0, g)
        # CutMix copies whole pixel values (integers here); MixUp blends them.
        kinds.append("cutmix" if torch.equal(out, out.round()) else "mixup")
    assert 10 < kinds.count("cutmix") < 30


def test_mix_batch_targets_carry_the_mixed_labels():
    x, y = distinct_batch()
    torch.manual_seed(1)
    out, targets = mix_batch(x, y, 16, "mixup", 1.0, gen())
    # Each mixed image is sum_k target_k * image_k for images that are all k.
    torch.testing.assert_close(out[:, 0, 0, 0], targets @ torch.arange(16, dtype=torch.float32))
    assert math.isclose(targets.sum().item(), 16, rel_tol=1e-6)
