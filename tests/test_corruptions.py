"""trainables.corruptions: every corruption at every severity, checked on real pixels; the release loader on
files written in the CIFAR-100-C layout; ood_accuracy's numbers for a predictor whose answers we know."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

from trainables.corruptions import (
    CORRUPTIONS,
    PARAMS,
    RELEASE_FILES,
    corrupt,
    corrupted_sets,
    load_cifar_c,
    ood_accuracy,
    parse_names,
    parse_severities,
)
from trainables.data import DataError

NOISE = ("gaussian_noise", "shot_noise")
SEVERITIES = (1, 2, 3, 4, 5)


def natural(n: int = 8, c: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """1/f noise (the power spectrum of natural images) on a gradient, plus a bright disk and a dark bar."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    tex = np.fft.ifft2((rng.normal(size=(n, c, size, size)) + 1j * rng.normal(size=(n, c, size, size))) / f).real
    tex *= 0.12 / tex.std(axis=(2, 3), keepdims=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    imgs = 0.5 + 0.3 * (xx - 0.5) - 0.2 * (yy - 0.5) + tex
    for i in range(n):
        imgs[i, :, (yy * 31 - 10 - i) ** 2 + (xx * 31 - 20) ** 2 < 36] = 0.85
        imgs[i, :, 18:28, 4 + i:10 + i] = 0.15
    return np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8)


X3, X1 = natural(c=3), natural(c=1, seed=1)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_uint8_same_shape(name, severity):
    for x in (X3, X1):
        out = corrupt(x, name, severity, seed=3)
        assert out.dtype == np.uint8 and out.shape == x.shape
        np.testing.assert_array_equal(out, corrupt(x, name, severity, seed=3))


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", NOISE)
def test_noise_differs_between_seeds(name, severity):
    assert not np.array_equal(corrupt(X3, name, severity, seed=0), corrupt(X3, name, severity, seed=1))


def test_noise_is_independent_across_names_and_severities():
    gray = np.full((8, 3, 32, 32), 128, np.uint8)
    noise = {(n, s): (corrupt(gray, n, s).astype(float) - 128).ravel() for n in NOISE for s in SEVERITIES}
    pairs = [(("gaussian_noise", s), ("shot_noise", s)) for s in SEVERITIES]
    pairs += [((n, s), (n, s + 1)) for n in NOISE for s in SEVERITIES[:-1]]
    for a, b in pairs:
        assert abs(np.corrcoef(noise[a], noise[b])[0, 1]) < 0.05, (a, b)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_change_grows_with_severity(name):
    for x in (X3, X1):
        change = [np.abs(corrupt(x, name, s).astype(float) - x).mean() for s in SEVERITIES]
        assert change[0] > 0
        assert all(b >= a for a, b in zip(change, change[1:])), change


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_an_equal_copy(name):
    out = corrupt(X3, name, 0)
    np.testing.assert_array_equal(out, X3)
    assert out is not X3 and not np.shares_memory(out, X3)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_prefix_gives_the_first_rows(name):
    np.testing.assert_array_equal(corrupt(X3[:5], name, 4, seed=7), corrupt(X3, name, 4, seed=7)[:5])


def test_prefix_independence_across_chunks():
    x = np.repeat(X1, 80, axis=0)  # 640 images: more than one internal chunk
    np.testing.assert_array_equal(corrupt(x[:600], "shot_noise", 2), corrupt(x, "shot_noise", 2)[:600])


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_std_is_c(severity):
    gray = np.full((16, 3, 32, 32), 128, np.uint8)  # 0.5: clipping at 0 or 1 is 5 std away even at c = 0.1
    diff = (corrupt(gray, "gaussian_noise", severity).astype(float) - gray) / 255
    c = PARAMS["gaussian_noise"][severity - 1]
    assert abs(diff.std() / c - 1) < 0.05
    assert abs(diff.mean()) < 0.05 * c


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_spreads_a_point_into_the_kernel(severity):
    sigma = PARAMS["gaussian_blur"][severity - 1]
    point = np.zeros((1, 1, 33, 33), np.uint8)
    point[0, 0, 16, 16] = 255
    out = corrupt(point, "gaussian_blur", severity)[0, 0].astype(float)
    d2 = np.add.outer((np.arange(33) - 16) ** 2, (np.arange(33) - 16) ** 2)
    center = out[16, 16]
    np.testing.assert_allclose(out / center, np.exp(-d2 / (2 * sigma**2)), rtol=0, atol=1 / center)
    # the truncated 1-D kernel (4 sigma) is normalized to sum 1, so the centre keeps 255 / (sum of weights)^2
    k = np.exp(-np.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1) ** 2 / (2 * sigma**2))
    assert abs(center - 255 / k.sum() ** 2) <= 0.5


def test_gaussian_blur_keeps_channels_and_images_apart():
    x = np.zeros((3, 3, 16, 16), np.uint8)
    x[1, 2, 8, 8] = 255
    out = corrupt(x, "gaussian_blur", 5)
    assert out[1, 2].sum() > 0
    assert out[[0, 2]].max() == 0 and out[1, :2].max() == 0


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_pulls_each_channel_towards_its_mean(severity):
    c = PARAMS["contrast"][severity - 1]
    x = X3 / 255
    mean = x.mean(axis=(2, 3), keepdims=True)
    expected = ((x - mean) * c + mean) * 255
    assert np.abs(corrupt(X3, "contrast", severity) - expected).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_adds_c_to_the_hsv_value(severity):
    c = PARAMS["brightness"][severity - 1]
    x = np.concatenate([X3[:1, :, :8, :8], np.zeros((1, 3, 8, 8), np.uint8)])  # black pixels too
    out = corrupt(x, "brightness", severity)
    for n, i, j in np.ndindex(2, 8, 8):
        h, s, v = colorsys.rgb_to_hsv(*(x[n, :, i, j] / 255))
        expected = np.array(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))) * 255
        assert np.abs(out[n, :, i, j] - expected).max() <= 0.5 + 1e-9
    gray = corrupt(X1, "brightness", severity).astype(float)
    assert np.abs(gray - np.minimum(X1 / 255 + c, 1) * 255).max() <= 0.5 + 1e-9


def test_bad_name_and_severity_are_one_line_value_errors():
    with pytest.raises(ValueError) as e:
        corrupt(X3, "fog", 1)
    assert all(name in one_line(e) for name in CORRUPTIONS)
    for severity in (-1, 6, 2.0):
        with pytest.raises(ValueError) as e:
            corrupt(X3, "contrast", severity)
        assert "0..5" in one_line(e)


def test_parse_names_and_severities():
    assert parse_names("all") == CORRUPTIONS
    assert parse_names("jpeg, contrast") == ("jpeg", "contrast")
    assert parse_severities("1,3,5") == (1, 3, 5)
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("0,2-3") == (0, 2, 3)
    for bad in ("", "jpeg,,contrast", "jpeg,fog", "jpeg,jpeg"):
        with pytest.raises(ValueError) as e:
            parse_names(bad)
        one_line(e)
    for bad in ("", "6", "1-6", "3-1", "a", "1,1", "1-"):
        with pytest.raises(ValueError) as e:
            parse_severities(bad)
        one_line(e)


def test_corrupted_sets_yields_every_pair_in_order():
    got = [(n, s, xc) for n, s, xc in corrupted_sets(X1, ("jpeg", "contrast"), (0, 2), seed=1)]
    assert [(n, s) for n, s, _ in got] == [("jpeg", 0), ("jpeg", 2), ("contrast", 0), ("contrast", 2)]
    np.testing.assert_array_equal(got[1][2], corrupt(X1, "jpeg", 2, seed=1))
    with pytest.raises(ValueError):
        corrupted_sets(X1, ("jpeg", "fog"), (1,))  # checked when called, before anything is computed


N_TEST = 4


def write_release(directory, names=CORRUPTIONS, shape=(5 * N_TEST, 32, 32, 3), labels=None):
    """The CIFAR-100-C layout: <name>.npy (5 * n, 32, 32, 3) uint8, severity s in rows [(s-1)n, sn); labels.npy."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name in names:
        arrays[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        np.save(directory / RELEASE_FILES[name], arrays[name])
    labels = np.tile(np.arange(N_TEST, dtype=np.uint8) + 10, 5) if labels is None else labels
    np.save(directory / "labels.npy", labels)
    return arrays, labels


def test_load_cifar_c_reads_the_severity_rows_as_nchw(tmp_path):
    arrays, labels = write_release(tmp_path)
    got = list(load_cifar_c(tmp_path, ("jpeg", "contrast"), (2,), N_TEST))
    assert [(n, s) for n, s, _, _ in got] == [("jpeg", 2), ("contrast", 2)]
    for name, _, x, y in got:
        assert x.dtype == np.uint8 and x.shape == (N_TEST, 3, 32, 32)
        np.testing.assert_array_equal(x, arrays[name][4:8].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(y, labels[4:8])
    assert (tmp_path / "jpeg_compression.npy").exists()


def test_load_cifar_c_names_every_missing_file_before_reading(tmp_path):
    write_release(tmp_path, names=("contrast",))
    with pytest.raises(DataError) as e:
        load_cifar_c(tmp_path, ("pixelate", "contrast", "jpeg"), (1,), N_TEST)
    message = one_line(e)
    assert str(tmp_path) in message and "pixelate.npy" in message and "jpeg_compression.npy" in message
    assert "contrast.npy" not in message and "zenodo.org/record/3555552" in message


@pytest.mark.parametrize("shape", [(16, 32, 32, 3), (20, 32, 32, 1), (20, 3, 32, 32)])
def test_load_cifar_c_rejects_a_wrong_shape(tmp_path, shape):
    write_release(tmp_path, names=("contrast",), shape=shape)
    with pytest.raises(DataError) as e:
        load_cifar_c(tmp_path, ("contrast",), (1,), N_TEST)
    assert "contrast.npy" in one_line(e)


def test_load_cifar_c_rejects_labels_of_the_wrong_length(tmp_path):
    write_release(tmp_path, names=("contrast",), labels=np.zeros(5 * N_TEST + 1, np.uint8))
    with pytest.raises(DataError) as e:
        load_cifar_c(tmp_path, ("contrast",), (1,), N_TEST)
    assert "labels.npy" in one_line(e)


# Six textured images change under every corruption; four flat mid-gray ones change only under noise and
# brightness. The predictor answers the true label for an unchanged image and 0 (never a true label) otherwise.
X_OOD = np.concatenate([natural(n=6, seed=2), np.full((4, 3, 32, 32), 128, np.uint8)])
Y_OOD = np.arange(1, 11)


def knows_clean(images: np.ndarray) -> np.ndarray:
    return np.where((images == X_OOD).all(axis=(1, 2, 3)), Y_OOD, 0)


def test_ood_accuracy_exact_numbers():
    mean, per = ood_accuracy(knows_clean, X_OOD, Y_OOD, ("gaussian_noise", "contrast", "jpeg"), (0, 1, 5))
    assert per == {
        "gaussian_noise/0": 1.0, "gaussian_noise/1": 0.0, "gaussian_noise/5": 0.0, "gaussian_noise": 1 / 3,
        "contrast/0": 1.0, "contrast/1": 0.4, "contrast/5": 0.4, "contrast": pytest.approx(0.6, abs=1e-12),
        "jpeg/0": 1.0, "jpeg/1": 0.4, "jpeg/5": 0.4, "jpeg": pytest.approx(0.6, abs=1e-12),
    }
    assert mean == pytest.approx((3 * 1.0 + 0 + 0 + 4 * 0.4) / 9, abs=1e-12)


def test_ood_accuracy_severity_zero_is_clean_accuracy():
    y = Y_OOD.copy()
    y[:3] = 99  # the predictor gets these three wrong even when clean
    mean, per = ood_accuracy(knows_clean, X_OOD, y, CORRUPTIONS, (0,))
    assert per["brightness/0"] == 0.7 and per["brightness"] == 0.7
    assert mean == pytest.approx(0.7, abs=1e-12)


def test_ood_accuracy_from_the_release_files(tmp_path):
    x = X_OOD[:N_TEST]
    y = Y_OOD[:N_TEST]
    arrays, _ = write_release(tmp_path, names=("contrast",), labels=np.tile(y.astype(np.uint8), 5))
    rows = arrays["contrast"]
    rows[N_TEST:N_TEST + 1] = x[:1].transpose(0, 2, 3, 1)  # severity 2: one image as clean
    rows[2 * N_TEST:3 * N_TEST] = x.transpose(0, 2, 3, 1)  # severity 3: all clean
    np.save(tmp_path / "contrast.npy", rows)

    def predict(images):
        return np.where((images == x).all(axis=(1, 2, 3)), y, 0)

    mean, per = ood_accuracy(predict, x, y, ("contrast",), (1, 2, 3), source=tmp_path)
    assert per == {"contrast/1": 0.0, "contrast/2": 0.25, "contrast/3": 1.0, "contrast": 1.25 / 3}
    assert mean == pytest.approx(1.25 / 3, abs=1e-12)


def test_ood_accuracy_refuses_release_files_of_another_dataset(tmp_path):
    write_release(tmp_path, names=("contrast",))  # labels 10..13, not Y_OOD[:4]
    with pytest.raises(DataError) as e:
        ood_accuracy(lambda images: Y_OOD[:N_TEST], X_OOD[:N_TEST], Y_OOD[:N_TEST], ("contrast",), (1,),
                     source=tmp_path)
    assert "labels" in one_line(e)
