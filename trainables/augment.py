"""Batch augmentations as whole-tensor operations on the trial's device.

Every random function takes a batch (B, C, H, W) and a ``torch.Generator`` on the
same device, so a trial's augmentations are reproducible from its seed and need no
worker processes or per-image PIL work (AutoAugment and MixUp's and CutMix's lam
draw from torch's global RNG, which the trainable seeds and checkpoints as well).
Crop, flip and AutoAugment work on uint8 images; rotation, color jitter, blur and
noise on float images in [0, 1]; Cutout, MixUp and CutMix on normalized images.
``rotate``, ``adjust_colors`` and ``blur`` are their deterministic cores, for tests
and for corruptions.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels, then crop each image back at its own random offset.

    Draws ``dy``, then ``dx`` (one per image) from ``gen``. The output is a new contiguous
    (B, C, H, W) tensor. ``random_crop_flip`` does this and ``random_flip`` in one gather."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    # Every window of the padded image as a view (B, C, 2p+1, 2p+1, H, W); image i takes window (dy_i, dx_i).
    windows = F.pad(x, (padding,) * 4).unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(b, device=x.device), :, dy, dx].contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (one ``torch.rand`` per image from ``gen``)."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """``random_crop`` then, if ``flip``, ``random_flip``, in one gather from the padded batch.

    The same draws from ``gen`` in the same order (dy, dx, then the flips), so the output is
    bit for bit theirs: output pixel (i, j) of image b is padded pixel (dy_b + i, dx_b + j),
    with j mirrored to W - 1 - j for a flipped image. uint8 (or any dtype) in, a new
    contiguous (B, C, H, W) tensor of the same dtype out."""
    if padding <= 0:
        return random_flip(x, gen) if flip else x
    b, c, h, w = x.shape
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=dev)
    padded = F.pad(x, (padding,) * 4).contiguous()
    pw = w + 2 * padding
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirrored = torch.rand(b, generator=gen, device=dev) < 0.5
        cols = torch.where(mirrored[:, None], w - 1 - cols, cols)
    rows = (dy * pw)[:, None] + torch.arange(0, h * pw, pw, device=dev)  # (B, H) row starts in the flat image
    index = (rows[:, :, None] + (dx[:, None] + cols)[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W)
    return padded.view(b, c, -1).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x.float() - mean) / std`` bit for bit, with one new tensor instead of three (in-place
    subtract and divide): uint8 images (B, C, H, W), ``mean`` and ``std`` (1, C, 1, 1) on the
    0..255 scale (``DeviceData.mean``/``std``)."""
    out = x.float()
    if out is x:  # already float32: .float() returned the input itself
        out = x.clone()
    return out.sub_(mean).div_(std)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image (DeVries & Taylor 2017).

    Applied to normalized images, so zero is the dataset mean. The centre may lie
    anywhere in the image and the square is clipped at the borders."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return x.masked_fill(inside[:, None], 0.0)


# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) as torchvision lists it: 25 sub-policies, each two
# (operation, probability, magnitude bin of 10) applied in order.
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
# Operations whose magnitude is negated with probability 1/2.
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                        "Contrast", "Sharpness"})


def autoaugment_magnitude(op: str, bin: int | None, height: int, width: int) -> float:
    """Bin ``bin`` of torchvision's 10 magnitude bins of ``op``, computed as torchvision computes it
    (float32 ``linspace``, then a Python float), so that the same bits come out; 0.0 for an
    operation without a magnitude."""
    if bin is None:
        return 0.0
    if op in ("ShearX", "ShearY"):
        bins = torch.linspace(0.0, 0.3, 10)
    elif op == "TranslateX":
        bins = torch.linspace(0.0, 150.0 / 331.0 * width, 10)
    elif op == "TranslateY":
        bins = torch.linspace(0.0, 150.0 / 331.0 * height, 10)
    elif op == "Rotate":
        bins = torch.linspace(0.0, 30.0, 10)
    elif op in ("Brightness", "Color", "Contrast", "Sharpness"):
        bins = torch.linspace(0.0, 0.9, 10)
    elif op == "Posterize":
        bins = (8 - (torch.arange(10) / ((10 - 1) / 4))).round().int()
    elif op == "Solarize":
        bins = torch.linspace(1.0, 0.0, 10)
    else:
        raise ValueError(f"{op} takes no magnitude")
    return float(bins[bin])


def autoaugment_op(images: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One AutoAugment operation at a signed ``magnitude`` on uint8 images (..., C, H, W), with the
    torchvision.transforms.v2.functional call and arguments torchvision's AutoAugment makes (nearest
    interpolation, zero fill). Every one of them treats each image of a batch on its own."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    nearest = InterpolationMode.NEAREST
    if op in ("ShearX", "ShearY"):  # torchvision shears by atan(magnitude), in degrees, about the top left corner
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                         shear=[shear, 0.0] if op == "ShearX" else [0.0, shear],
                         interpolation=nearest, fill=None, center=[0, 0])
    if op == "TranslateX":
        return TF.affine(images, angle=0.0, translate=[int(magnitude), 0], scale=1.0, interpolation=nearest,
                         shear=[0.0, 0.0], fill=None)
    if op == "TranslateY":
        return TF.affine(images, angle=0.0, translate=[0, int(magnitude)], scale=1.0, interpolation=nearest,
                         shear=[0.0, 0.0], fill=None)
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=nearest, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize(images, threshold=255 * magnitude)  # torchvision: the dtype's maximum times the bin
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    if op == "Invert":
        return TF.invert(images)
    raise ValueError(f"unknown AutoAugment operation {op!r}")


class AutoAugmentPlan(NamedTuple):
    """The random draws of AutoAugment for a batch, one row per image: the sub-policy (uniform over
    the 25), for each of its two operations the uniform that decides whether it applies (it does when
    ``apply_u <= probability``, as torchvision's ``torch.rand(()) <= p``) and the one that decides the
    sign of a signed magnitude (negative when ``sign_u <= 0.5``). CPU tensors."""

    policy: torch.Tensor  # (B,) int64 in [0, 25)
    apply_u: torch.Tensor  # (B, 2) float32 in [0, 1)
    sign_u: torch.Tensor  # (B, 2) float32 in [0, 1)


class AutoAugment:
    """torchvision's AutoAugment with the CIFAR-10 policy, one policy draw per image, applied to the
    batch at once.

    ``plan`` draws every image's sub-policy, which operations apply and their signs; ``apply`` groups
    the images by the operation and signed magnitude they get at each of the two steps and runs each
    torchvision.transforms.v2.functional operation once per group, on the batch's device: every
    image comes out as torchvision's operations would make it alone (``steps`` lists them), drawn from
    the same distribution as torchvision's per-image ``v2.AutoAugment(CIFAR10)``. The draws come
    from ``gen`` when given, else from torch's global CPU RNG, which the trainable seeds and
    checkpoints (as it did when the v2 transform was called image by image)."""

    policies = CIFAR10_POLICY

    def __init__(self) -> None:
        self._probability = torch.tensor([[p for _, p, _ in sub] for sub in self.policies])  # (25, 2) float32

    def plan(self, batch_size: int, gen: torch.Generator | None = None) -> AutoAugmentPlan:
        device = gen.device if gen is not None else torch.device("cpu")
        policy = torch.randint(len(self.policies), (batch_size,), generator=gen, device=device)
        apply_u = torch.rand(batch_size, 2, generator=gen, device=device)
        sign_u = torch.rand(batch_size, 2, generator=gen, device=device)
        return AutoAugmentPlan(policy.cpu(), apply_u.cpu(), sign_u.cpu())

    def steps(self, plan: AutoAugmentPlan, height: int, width: int) -> list[list[tuple[str, float] | None]]:
        """For each image of ``plan``, its two steps: (operation, signed magnitude), or None where the
        operation does not apply. ``height`` and ``width`` set the translations' magnitudes."""
        applies = (plan.apply_u <= self._probability[plan.policy]).tolist()  # float32 against float32, as torchvision
        negative = (plan.sign_u <= 0.5).tolist()
        magnitudes: dict[tuple[str, int | None], float] = {}
        steps = []
        for i, sub in enumerate(plan.policy.tolist()):
            row = []
            for k, (op, _, bin) in enumerate(self.policies[sub]):
                if not applies[i][k]:
                    row.append(None)
                    continue
                if (op, bin) not in magnitudes:
                    magnitudes[op, bin] = autoaugment_magnitude(op, bin, height, width)
                magnitude = magnitudes[op, bin]
                if bin is not None and op in SIGNED_OPS and negative[i][k]:
                    magnitude = -magnitude
                row.append((op, magnitude))
            steps.append(row)
        return steps

    def apply(self, x: torch.Tensor, plan: AutoAugmentPlan) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError("AutoAugment works on uint8 images")
        if len(plan.policy) != len(x):
            raise ValueError(f"a plan for {len(plan.policy)} images, a batch of {len(x)}")
        steps = self.steps(plan, x.shape[-2], x.shape[-1])
        out = x.clone()
        for k in range(2):
            groups: dict[tuple[str, float], list[int]] = {}
            for i, row in enumerate(steps):
                if row[k] is not None:
                    groups.setdefault(row[k], []).append(i)
            for (op, magnitude), members in groups.items():
                idx = torch.tensor(members, device=x.device)
                out.index_copy_(0, idx, autoaugment_op(out.index_select(0, idx), op, magnitude))
        return out

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError("AutoAugment works on uint8 images")
        return self.apply(x, self.plan(len(x), gen))


# Float augmentations: images in [0, 1], shape (B, C, H, W) with C = 1 or 3; each returns
# its input unchanged at strength 0 and clamps its output to [0, 1].

def _check_float(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} works on float images in [0, 1], got {x.dtype}")


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate image i by ``angles[i]`` degrees counter-clockwise about its centre, bilinear,
    black outside, as torchvision's ``rotate`` (one ``grid_sample`` for the batch)."""
    _check_float(x, "rotate")
    b, _, h, w = x.shape
    rad = torch.deg2rad(angles.to(x.device, x.dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # Output -> input pixel offsets from the centre, rotated by -angle (y points down), in
    # affine_grid's [-1, 1] coordinates, which stretch x by W/2 and y by H/2.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                         torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def random_rotation(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by its own angle, uniform in [-degrees, degrees] (torchvision RandomRotation)."""
    if degrees == 0:
        return x
    angles = (torch.rand(x.shape[0], generator=gen, device=x.device) * 2 - 1) * abs(degrees)
    return rotate(x, angles)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma, 0.299 R + 0.587 G + 0.114 B; a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def adjust_colors(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor) -> torch.Tensor:
    """Per-image factors (B,), applied in this order with torchvision's formulas: brightness
    scales, contrast blends with the mean of the grayscale image, saturation with the
    grayscale image (no-op on 1 channel); clamped to [0, 1] after each, as torchvision."""
    _check_float(x, "adjust_colors")

    def blend(img, other, factor):
        f = factor.to(x.device, x.dtype)[:, None, None, None]
        return (f * img + (1 - f) * other).clamp_(0, 1)

    x = blend(x, 0.0, brightness)
    x = blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), contrast)
    if x.shape[1] == 1:
        return x
    return blend(x, _grayscale(x), saturation)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors uniform in [max(0, 1-s), 1+s]
    (torchvision ColorJitter(s, s, s), in a fixed order rather than its random one)."""
    if strength == 0:
        return x
    low, high = max(0.0, 1 - strength), 1 + strength
    f = low + (high - low) * torch.rand(3, x.shape[0], generator=gen, device=x.device)
    return adjust_colors(x, f[0], f[1], f[2])


def _blur(x: torch.Tensor, sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur, sigma ``sigmas[i]`` for image i, kernel 2*radius+1 wide,
    reflect padding: two grouped convolutions over all B*C channels at once."""
    b, c, h, w = x.shape
    radius = min(radius, h - 1, w - 1)  # reflect padding needs less than the image size
    d = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-d**2 / (2 * sigmas.to(x.device, x.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, k)
    out = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    out = F.conv2d(out, kernel[:, None, None, :], groups=b * c)  # along rows
    out = F.conv2d(out, kernel[:, None, :, None], groups=b * c)  # along columns
    return out.reshape(b, c, h, w).clamp_(0, 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every image with ``sigma`` (pixels), kernel 2*ceil(3 sigma)+1, reflect padding."""
    _check_float(x, "blur")
    if sigma <= 0:
        return x
    return _blur(x, torch.full((x.shape[0],), float(sigma)), math.ceil(3 * sigma))


def gaussian_blur(x: torch.Tensor, sigma_max: float, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per image, blur with sigma uniform in [0.1, sigma_max] (pixels),
    kernel 2*ceil(3 sigma_max)+1 for all (torchvision GaussianBlur under RandomApply)."""
    _check_float(x, "gaussian_blur")
    if sigma_max <= 0 or p <= 0:
        return x
    b = x.shape[0]
    u = torch.rand(2, b, generator=gen, device=x.device)
    sigmas = 0.1 + (max(sigma_max, 0.1) - 0.1) * u[0]
    return torch.where((u[1] < p)[:, None, None, None], _blur(x, sigmas, math.ceil(3 * sigma_max)), x)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Add N(0, std^2) noise per pixel (std on the 0..1 scale), clamped to [0, 1]."""
    _check_float(x, "gaussian_noise")
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + std * noise).clamp_(0, 1)


# Batch mixing, on normalized images and integer labels, returning soft targets (B, num_classes).
# lam ~ Beta(alpha, alpha) comes from torch's global CPU RNG, since torch.distributions takes
# no generator (the trainable seeds and checkpoints that RNG, as for AutoAugment); the
# partner permutation and CutMix's box come from ``gen``.

MIX_MODES = ("none", "mixup", "cutmix", "cutmix_mixup")


def _one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(y.long(), num_classes).to(dtype if dtype.is_floating_point else torch.float32)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018): x = lam x + (1-lam) x[perm], targets likewise, one lam per batch."""
    targets = _one_hot(y, num_classes, x.dtype)
    if alpha <= 0:
        return x, targets, 1.0
    lam = _beta(alpha)
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm], lam


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): one box of area about (1-lam) H W, centre uniform in the image
    and clipped at the borders, pasted from x[perm] into every image; lam is then the area
    actually kept, which the targets use (torchvision's and timm's correction)."""
    targets = _one_hot(y, num_classes, x.dtype)
    if alpha <= 0:
        return x, targets, 1.0
    lam = _beta(alpha)
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen, device=x.device)
    u = torch.rand(2, generator=gen, device=x.device).tolist()  # the box centre; one sync per batch
    cy, cx = int(u[0] * h), int(u[1] * w)
    half_h, half_w = int(0.5 * math.sqrt(1 - lam) * h), int(0.5 * math.sqrt(1 - lam) * w)
    y1, y2 = max(cy - half_h, 0), min(cy + half_h, h)
    x1, x2 = max(cx - half_w, 0), min(cx + half_w, w)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
    return out, lam * targets + (1 - lam) * targets[perm], lam


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mode: str, alpha: float,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, soft targets) for ``mode`` in MIX_MODES; "cutmix_mixup" picks one of the two
    per batch with probability 1/2, drawn from torch's global CPU RNG like lam (torchvision's
    RandomChoice([CutMix, MixUp]))."""
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}; known: {', '.join(MIX_MODES)}")
    if mode == "none":
        return x, _one_hot(y, num_classes, x.dtype)
    if mode == "cutmix_mixup":
        mode = "cutmix" if torch.rand(()) < 0.5 else "mixup"
    mixed, targets, _ = (cutmix if mode == "cutmix" else mixup)(x, y, num_classes, alpha, gen)
    return mixed, targets
