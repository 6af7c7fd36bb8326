"""A user's own images through trainables.data.prepare: imagefolder:PATH and npz:PATH, on real
PNG folders (Pillow) and real .npz files, read back exactly, and every bad input refused in one line."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables import data, userdata
from trainables.data import DataError, check_name, prepare, split_indices

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SORTED = tuple(sorted(NAMES))  # ImageFolder's classes: sorted folder names


@pytest.fixture(scope="module")
def digits():
    """sklearn's bundled 8x8 digits as uint8 0..255, first 50 (each digit 3..7 times)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images[:50] * 255 / 16).astype(np.uint8), d.target[:50].astype(np.int64)


def write_folder(root: Path, split: str, images, labels) -> list[tuple[np.ndarray, int]]:
    """PNGs at root/split/<digit name>/<i>.png; returns (pixels, sorted-class label) in
    ImageFolder's order: by class folder name, then file name."""
    for i, (img, y) in enumerate(zip(images, labels)):
        folder = root / split / NAMES[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    order = sorted(range(len(labels)), key=lambda i: (NAMES[labels[i]], f"{i:03d}"))
    return [(images[i], SORTED.index(NAMES[labels[i]])) for i in order]


def name_of(root: Path) -> str:
    return f"imagefolder:{root}"


def assert_stats_from_train(ds):
    pix = ds.x_train.astype(np.float64) / 255
    assert ds.mean == pytest.approx(tuple(pix.mean(axis=(0, 2, 3))), abs=1e-12)
    assert ds.std == pytest.approx(tuple(pix.std(axis=(0, 2, 3))), abs=1e-12)


def one_line_error(call) -> str:
    with pytest.raises(DataError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --- image folders ---------------------------------------------------------------------------


def test_folder_without_test_holds_out_a_fixed_20_percent(tmp_path, digits):
    x, y = digits
    expected = write_folder(tmp_path, "train", x, y)
    ds = prepare(name_of(tmp_path), None, val_fraction=0.1, split_seed=0)
    assert ds.name == f"imagefolder:{tmp_path}" and ds.classes == SORTED and ds.num_classes == 10
    assert ds.x_train.shape == (36, 1, 8, 8) and ds.x_val.shape == (4, 1, 8, 8) and ds.x_test.shape == (10, 1, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.input_shape == (1, 8, 8)
    all_x = np.stack([a for a, _ in expected])[:, None]
    all_y = np.array([c for _, c in expected])
    rest, test = split_indices(50, 0.2, 0)
    train_idx, val_idx = split_indices(40, 0.1, 0)
    np.testing.assert_array_equal(ds.x_test, all_x[test])  # PNG is lossless: the very pixels written
    np.testing.assert_array_equal(ds.y_test, all_y[test])
    np.testing.assert_array_equal(ds.x_train, all_x[rest][train_idx])
    np.testing.assert_array_equal(ds.y_val, all_y[rest][val_idx])
    assert SORTED[all_y[0]] == "eight" and all_y[-1] == SORTED.index("zero")
    assert_stats_from_train(ds)
    again = prepare(name_of(tmp_path), None, val_fraction=0.1, split_seed=0)
    assert again.fingerprint() == ds.fingerprint()
    other = prepare(name_of(tmp_path), None, val_fraction=0.25, split_seed=3)
    np.testing.assert_array_equal(other.x_test, ds.x_test)  # the held-out set never moves
    assert len(other.y_val) == 10 and not np.array_equal(other.x_train[:10], ds.x_train[:10])


def test_folder_with_test_split(tmp_path, digits):
    x, y = digits
    train = write_folder(tmp_path, "train", x[:40], y[:40])
    test_rows = [i for i in range(40, 50) if y[i] in (0, 5, 7)]  # test/ may have fewer classes
    test = write_folder(tmp_path, "test", x[test_rows], y[test_rows])
    ds = prepare(name_of(tmp_path), None, val_fraction=0.25, split_seed=1)
    assert ds.classes == SORTED and len(ds.y_train) + len(ds.y_val) == 40 and len(ds.y_val) == 10
    np.testing.assert_array_equal(ds.x_test[:, 0], np.stack([a for a, _ in test]))
    np.testing.assert_array_equal(ds.y_test, [c for _, c in test])
    assert set(ds.y_test) == {SORTED.index(n) for n in ("zero", "five", "seven")}
    train_idx, _ = split_indices(40, 0.25, 1)
    np.testing.assert_array_equal(ds.x_train[:, 0], np.stack([a for a, _ in train])[train_idx])
    assert_stats_from_train(ds)


def test_colour_and_grayscale_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    pal = Image.fromarray(rng.integers(0, 4, (6, 5), dtype=np.uint8), mode="L").convert("P")
    pal.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120] + [0] * 756)
    pal.info["transparency"] = b"\x00\x80"
    for name, img in {"a/rgb": Image.fromarray(rgb), "a/gray": Image.fromarray(gray),
                      "b/rgba": Image.fromarray(rgba), "b/pal": pal}.items():
        (tmp_path / "c" / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "c" / "train" / f"{name}.png", **({"transparency": b"\x00\x80"} if name == "b/pal" else {}))
    ds = prepare(name_of(tmp_path / "c"), None, val_fraction=0.0)
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.shape == (4, 3, 6, 5) and ds.classes == ("a", "b")
    found = {bytes(a) for a in x}
    assert bytes(rgb.transpose(2, 0, 1)) in found  # a/rgb
    assert bytes(np.stack([gray] * 3)) in found  # a/gray, grey copied into R, G and B
    assert bytes(rgba[..., :3].transpose(2, 0, 1)) in found  # b/rgba, alpha dropped
    pal_rgb = np.asarray(pal.convert("RGBA").convert("RGB"))
    assert bytes(pal_rgb.transpose(2, 0, 1)) in found  # b/pal, its palette colours
    assert len(ds.mean) == len(ds.std) == 3

    g = tmp_path / "g" / "train"
    (g / "x").mkdir(parents=True)
    (g / "y").mkdir()
    Image.fromarray(gray).save(g / "x" / "l.png")
    Image.fromarray(gray > 127).save(g / "x" / "one_bit.png")  # mode "1"
    Image.fromarray(gray.astype(np.uint16)).save(g / "y" / "sixteen.png")  # mode "I;16"
    ds = prepare(name_of(tmp_path / "g"), None, val_fraction=0.0)
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.shape == (3, 1, 6, 5) and len(ds.mean) == 1
    found = {bytes(a[0]) for a in x}
    assert found == {bytes(gray), bytes(np.where(gray > 127, 255, 0).astype(np.uint8))}  # I;16 0..255 reads back


def test_image_size_resizes_with_pillow_bilinear(tmp_path, digits):
    x, y = digits
    big = [np.asarray(Image.fromarray(a).resize((16, 16), Image.Resampling.NEAREST)) for a in x[:10]]
    mixed = [big[i] if i % 2 else x[i] for i in range(10)]
    for i, a in enumerate(mixed):
        (tmp_path / "train" / str(y[i] % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "train" / str(y[i] % 2) / f"{i}.png")
    msg = one_line_error(lambda: prepare(name_of(tmp_path), None))
    assert "images differ in size: train/0/0.png is 8x8 but train/1/1.png is 16x16" in msg and "image_size" in msg
    ds = prepare(name_of(tmp_path), None, val_fraction=0.0, image_size=12)
    x_all = np.concatenate([ds.x_train, ds.x_test])
    assert x_all.shape == (10, 1, 12, 12) and ds.input_shape == (1, 12, 12)
    want = {bytes(np.asarray(Image.fromarray(a).resize((12, 12), Image.Resampling.BILINEAR))) for a in mixed}
    assert {bytes(a[0]) for a in x_all} == want
    same = prepare(name_of(tmp_path), None, val_fraction=0.0, image_size=16)  # 16x16 files are kept exactly
    assert {bytes(big[i]) for i in (1, 3, 5, 7, 9)} <= {bytes(a[0]) for a in np.concatenate([same.x_train,
                                                                                            same.x_test])}


def test_relative_paths_resolve_against_base_dir(tmp_path, digits, monkeypatch):
    x, y = digits
    write_folder(tmp_path / "pets", "train", x, y)
    np.savez(tmp_path / "pets.npz", x_train=x, y_train=y)
    a = prepare("imagefolder:pets", None, base_dir=tmp_path)
    assert a.name == f"imagefolder:{tmp_path / 'pets'}" and a.x_train.shape == (36, 1, 8, 8)
    b = prepare("npz:sub/../pets.npz", "/unused", base_dir=tmp_path)
    assert b.name == f"npz:{tmp_path / 'pets.npz'}"  # absolute and normalised: unambiguous provenance
    monkeypatch.chdir(tmp_path)
    c = prepare("npz:pets.npz", None)  # no base_dir: the working directory
    assert c.fingerprint() == b.fingerprint() and c.name == b.name
    assert data.expected_files("npz:pets.npz", None, base_dir=tmp_path) == [tmp_path / "pets.npz"]
    assert data.expected_files("imagefolder:pets", None) == [tmp_path / "pets" / "train"]
    data.check_available("imagefolder:pets", None)
    msg = one_line_error(lambda: prepare("npz:nope.npz", None, base_dir=tmp_path / "sub"))
    assert msg.startswith(f"npz:{tmp_path / 'sub' / 'nope.npz'}: no such file") and "resolved against" in msg


# --- npz -------------------------------------------------------------------------------------


def test_npz_layouts_give_identical_nchw(tmp_path):
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, (30, 3, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 4, 30)
    y[:4] = np.arange(4)
    np.savez(tmp_path / "nchw.npz", x_train=nchw, y_train=y)
    np.savez_compressed(tmp_path / "nhwc.npz", x_train=nchw.transpose(0, 2, 3, 1), y_train=y[:, None])  # (N, 1) too
    a, b = (prepare(f"npz:{tmp_path / f}", None) for f in ("nchw.npz", "nhwc.npz"))
    rest, test = split_indices(30, 0.2, 0)
    train_idx, _ = split_indices(24, 0.1, 0)
    for ds in (a, b):
        assert ds.x_train.shape == (22, 3, 6, 5) and ds.x_test.shape == (6, 3, 6, 5) and ds.x_train.flags.c_contiguous
        np.testing.assert_array_equal(ds.x_test, nchw[test])
        np.testing.assert_array_equal(ds.x_train, nchw[rest][train_idx])
        np.testing.assert_array_equal(ds.y_train, y[rest][train_idx])
        assert ds.classes == ("0", "1", "2", "3") and ds.y_train.dtype == np.int64
        assert_stats_from_train(ds)
    gray = nchw[:, 0]
    for i, arr in enumerate((gray, gray[:, None], gray[..., None])):  # NHW, NCHW and NHWC with C = 1
        np.savez(tmp_path / f"g{i}.npz", x_train=arr, y_train=y)
        ds = prepare(f"npz:{tmp_path / f'g{i}.npz'}", None)
        np.testing.assert_array_equal(ds.x_test, gray[test][:, None])
    np.savez(tmp_path / "amb.npz", x_train=rng.integers(0, 256, (30, 3, 4, 3), dtype=np.uint8), y_train=y)
    assert prepare(f"npz:{tmp_path / 'amb.npz'}", None).input_shape == (3, 4, 3)  # shape[1] in (1, 3): NCHW


def test_npz_test_split_and_class_names(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:].astype(np.uint8),
             class_names=np.array(NAMES))
    ds = prepare(f"npz:{tmp_path / 'd.npz'}", None, val_fraction=0.0)
    assert ds.classes == NAMES and ds.x_train.shape == (40, 1, 8, 8) and ds.x_test.shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(ds.x_train[:, 0], x[:40])
    np.testing.assert_array_equal(ds.x_test[:, 0], x[40:])
    np.testing.assert_array_equal(ds.y_test, y[40:])
    assert ds.y_test.dtype == np.int64
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y, class_names=np.array([n.encode() for n in NAMES] + [b"extra"]))
    assert prepare(f"npz:{tmp_path / 'b.npz'}", None).classes == (*NAMES, "extra")  # bytes names; an unused class


def test_npz_image_size_uses_torchvision_resize(tmp_path, digits):
    import torch
    from torchvision.transforms.v2 import functional as F

    x, y = digits
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    ds = prepare(f"npz:{tmp_path / 'd.npz'}", None, val_fraction=0.0, image_size=20)
    want = F.resize(torch.from_numpy(x[:, None]), [20, 20], antialias=True).numpy()
    assert ds.x_train.shape == (40, 1, 20, 20) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([ds.x_train, ds.x_test]), want)
    assert_stats_from_train(ds)


# --- memory ----------------------------------------------------------------------------------


def test_too_large_for_memory_is_refused_before_decoding(tmp_path, digits, monkeypatch):
    x, y = digits
    write_folder(tmp_path / "f", "train", x, y)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((50, 64, 64, 3), np.uint8), y_train=y)
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", "1")
    monkeypatch.setattr(userdata, "_decode", lambda *a: pytest.fail("decoded before the memory check"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded before the memory check"))
    msg = one_line_error(lambda: prepare(name_of(tmp_path / "f"), None, image_size=256))
    assert msg == (f"imagefolder:{tmp_path / 'f'}: 50 images of 1x256x256 need 3.1 MiB as uint8; this machine has "
                   f"1.0 MiB available (TUNE_APP_MEMORY_MB); pass image_size=128 (images resized to 128x128) "
                   f"or use fewer images")
    msg = one_line_error(lambda: prepare(f"npz:{tmp_path / 'd.npz'}", None, image_size=128))
    assert msg == (f"npz:{tmp_path / 'd.npz'}: 50 images of 3x128x128 need 2.9 MiB as uint8 (with the file's 0.6 MiB "
                   f"of arrays read before resizing); this machine has 1.0 MiB available (TUNE_APP_MEMORY_MB); "
                   f"pass image_size=48 (images resized to 48x48) or use fewer images")
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", "0.5")  # the file's own arrays do not fit: no size helps
    assert one_line_error(lambda: prepare(f"npz:{tmp_path / 'd.npz'}", None)) == (
        f"npz:{tmp_path / 'd.npz'}: 50 images of 3x64x64 need 0.6 MiB as uint8; this machine has 0.5 MiB available "
        f"(TUNE_APP_MEMORY_MB); use fewer images or a machine with more memory")


def test_memory_is_checked_again_when_a_later_image_is_colour(tmp_path, digits, monkeypatch):
    x, y = digits
    write_folder(tmp_path, "train", x, y)  # 50 x 1x8x8 = 3200 bytes; as RGB 9600
    Image.fromarray(np.stack([x[0]] * 3, -1)).save(tmp_path / "train" / "zero" / "999.png")
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", str(6000 / 2**20))
    assert "51 images of 3x8x8 need 9.6 KiB" in one_line_error(lambda: prepare(name_of(tmp_path), None))
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", str(9792 / 2**20))  # exactly enough
    assert prepare(name_of(tmp_path), None).input_shape == (3, 8, 8)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux's /proc/meminfo")
def test_memory_available_comes_from_the_kernel(monkeypatch):
    monkeypatch.delenv("TUNE_APP_MEMORY_MB", raising=False)
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(userdata.available_bytes() - kib * 1024) < 2**30  # it moves a little between the two reads
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", "12.5")
    assert userdata.available_bytes() == 12.5 * 2**20
    monkeypatch.setenv("TUNE_APP_MEMORY_MB", "lots")
    assert "TUNE_APP_MEMORY_MB='lots'" in one_line_error(userdata.available_bytes)


# --- bad input: one line each, naming what is wrong ------------------------------------------


def _png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _two_classes(root: Path, x) -> None:
    for i in range(4):
        _png(root / "train" / ("a", "b")[i % 2] / f"{i}.png", x[i])


def _folder_cases(root: Path, x, y):
    """(what, dataset name, text the message must hold) for each bad image folder."""
    root.mkdir()
    cases = [("missing", root / "nope", ["no such folder"])]
    (root / "file").write_text("x")
    cases.append(("a file", root / "file", ["not a folder"]))
    _png(root / "notrain" / "images" / "a" / "0.png", x[0])
    cases.append(("no train/", root / "notrain", ["no train/ folder", "it holds: images/", "train/<class>/<image>"]))
    _png(root / "flat" / "train" / "0.png", x[0])
    cases.append(("no classes", root / "flat", ["train holds no class folders"]))
    _png(root / "one" / "train" / "cat" / "0.png", x[0])
    cases.append(("one class", root / "one", ["holds only the class folder cat/", "at least two classes"]))
    _two_classes(root / "empty", x)
    (root / "empty" / "train" / "c").mkdir()
    (root / "empty" / "train" / "d").mkdir()
    (root / "empty" / "train" / "d" / "notes.txt").write_text("not an image")
    cases.append(("empty class", root / "empty", ["no images (.jpg", "in class folders train/c, train/d;"]))
    _two_classes(root / "corrupt", x)
    for i in range(5):
        (root / "corrupt" / "train" / "b" / f"bad{i}.png").write_bytes(b"not a png" * i)
    cases.append(("corrupt", root / "corrupt", ["5 image files cannot be read: train/b/bad0.png, train/b/bad1.png, "
                                                "train/b/bad2.png and 2 more", "UnidentifiedImageError"]))
    _two_classes(root / "truncated", x)
    png = root / "truncated" / "train" / "a" / "0.png"
    png.write_bytes(png.read_bytes()[:-30])  # the header still reads; decoding fails
    cases.append(("truncated", root / "truncated", ["1 image file cannot be read: train/a/0.png", "OSError"]))
    _two_classes(root / "testonly", x)
    for c in ("a", "fish", "bird"):
        _png(root / "testonly" / "test" / c / "0.png", x[0])
    cases.append(("test classes", root / "testonly", ["test/ has class folders that train/ lacks: bird, fish;"]))
    _two_classes(root / "testempty", x)
    (root / "testempty" / "test").mkdir()
    cases.append(("empty test/", root / "testempty", ["test holds no class folders", "remove it"]))
    _two_classes(root / "mixed", x)
    _png(root / "mixed" / "train" / "b" / "9.png", np.zeros((8, 10), np.uint8))
    cases.append(("mixed sizes", root / "mixed",
                  ["images differ in size: train/a/0.png is 8x8 but train/b/9.png is 10x8", "image_size=8"]))
    return [(what, f"imagefolder:{path}", texts) for what, path, texts in cases]


def _npz_cases(root: Path, x, y):
    """(what, dataset name, text the message must hold) for each bad .npz."""
    cases = [("missing", "nope.npz", {}, ["no such file"])]
    (root / "text.npz").write_text("hello")
    cases.append(("not npz", "text.npz", {}, ["not a readable NumPy .npz archive (BadZipFile", "np.savez"]))
    np.save(root / "array.npy", x)
    os.replace(root / "array.npy", root / "array.npz")
    cases.append(("an .npy", "array.npz", {}, ["not a readable NumPy .npz archive"]))

    def add(what, arrays, texts):
        cases.append((what, f"{what.replace(' ', '_')}.npz", arrays, texts))

    add("no x_train", {"images": x, "labels": y}, ["has no x_train array (it has: images, labels)"])
    add("no y_train", {"x_train": x}, ["has no y_train array (it has: x_train)"])
    add("x_test alone", {"x_train": x, "y_train": y, "x_test": x}, ["has x_test without y_test"])
    add("lengths", {"x_train": x, "y_train": y[:-1]}, ["x_train holds 50 images but y_train has 49 labels"])
    add("test lengths", {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y}, ["x_test holds 5 images but "
                                                                                    "y_test has 50 labels"])
    add("float images", {"x_train": x / 255.0, "y_train": y}, ["x_train has dtype float64", "uint8 0..255"])
    add("int images", {"x_train": x.astype(np.int32), "y_train": y}, ["x_train has dtype int32", "x.astype(np.uint8)"])
    add("two images", {"x_train": x[:2], "y_train": y[:2]}, ["only 2 training images and no test split"])
    add("ndim", {"x_train": x.reshape(50, 64), "y_train": y}, ["x_train has shape (50, 64)", "(N, H, W)"])
    add("channels", {"x_train": np.zeros((50, 8, 8, 5), np.uint8), "y_train": y},
        ["x_train has shape (50, 8, 8, 5)", "C = 1 (grayscale) or 3 (RGB)"])
    add("empty", {"x_train": x[:0], "y_train": y[:0]}, ["x_train holds no images"])
    add("float labels", {"x_train": x, "y_train": y.astype(np.float64)}, ["y_train has dtype float64",
                                                                          "labels must be integers"])
    add("label shape", {"x_train": x, "y_train": np.stack([y, y], 1)},
        ["x_train holds 50 images but y_train has shape (50, 2)"])
    neg = y.copy()
    neg[7] = -1
    add("negative", {"x_train": x, "y_train": neg}, ["y_train has label -1; labels must be integers 0..classes-1"])
    add("test negative", {"x_train": x, "y_train": y, "x_test": x, "y_test": -y}, ["y_test has label -9"])
    add("few names", {"x_train": x, "y_train": y, "class_names": np.array(["a", "b"])},
        ["class_names lists 2 names but the labels go up to 9", "one name per class 0..9"])
    add("twice", {"x_train": x, "y_train": y, "class_names": np.array(list("abcdefghia"))},
        ["class_names lists 'a' more than once"])
    add("object names", {"x_train": x, "y_train": y, "class_names": np.array(list(NAMES), dtype=object)},
        ["class_names is an object array"])
    add("2-D names", {"x_train": x, "y_train": y, "class_names": np.array(NAMES).reshape(2, 5)},
        ["class_names has shape (2, 5)"])
    add("one class", {"x_train": x, "y_train": np.zeros(50, np.int64)}, ["only one class"])
    add("test channels", {"x_train": x, "y_train": y, "x_test": np.zeros((2, 8, 8, 3), np.uint8),
                          "y_test": y[:2]}, ["x_train images have 1 channel(s) but x_test images 3"])
    add("test size", {"x_train": x, "y_train": y, "x_test": np.zeros((2, 9, 9), np.uint8), "y_test": y[:2]},
        ["x_train images are 8x8 but x_test images 9x9", "image_size"])
    for _, fname, arrays, _ in cases:
        if arrays:
            np.savez(root / fname, **arrays)
    return [(what, f"npz:{root / fname}", texts) for what, fname, _, texts in cases]


def test_bad_inputs_are_one_line_data_errors(tmp_path, digits):
    x, y = digits
    cases = _folder_cases(tmp_path / "folders", x, y) + _npz_cases(tmp_path, x, y)
    (tmp_path / "folders").mkdir(exist_ok=True)
    for what, name, texts in cases:
        msg = one_line_error(lambda name=name: prepare(name, None))
        assert msg.startswith(f"{name}: "), (what, msg)
        for text in texts:
            assert text in msg, (what, text, msg)


def test_corrupt_files_that_are_fixed_then_load(tmp_path, digits):
    x, y = digits
    _two_classes(tmp_path, x)
    assert len(prepare(name_of(tmp_path), None, val_fraction=0.0).y_test) == 1  # round(4 * 0.2)


# --- names, arguments, CLI -------------------------------------------------------------------


def test_check_name_looks_at_the_string_only(tmp_path):
    for ok in ("digits", "cifar10", "imagefolder:/no/such/dir", "npz:rel.npz", "imagefolder:~/pets"):
        check_name(ok)
    for bad, text in [("svhn", "unknown dataset 'svhn'; known: digits, cifar10"), ("npz:", "names no path"),
                      ("imagefolder:  ", "names no path"), ("folder:/x", "unknown dataset"), ("", "unknown"),
                      ("NPZ:/x.npz", "imagefolder:PATH")]:
        with pytest.raises(ValueError, match=text) as err:
            check_name(bad)
        assert "\n" not in str(err.value) and not isinstance(err.value, DataError)
    assert one_line_error(lambda: prepare("npz:", None)).startswith("dataset 'npz:' names no path")


def test_image_size_argument_is_checked(tmp_path):
    assert "image_size applies to imagefolder:/npz: datasets only" in one_line_error(
        lambda: prepare("digits", None, image_size=32))
    for bad in (-1, 2.5, True):
        assert "image_size must be a whole number" in one_line_error(
            lambda bad=bad: prepare(f"npz:{tmp_path}/x.npz", None, image_size=bad))


def test_check_available_without_decoding(tmp_path, digits, monkeypatch):
    x, y = digits
    write_folder(tmp_path / "f", "train", x, y)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    monkeypatch.setattr(userdata, "_decode", lambda *a: pytest.fail("decoded"))
    data.check_available(f"imagefolder:{tmp_path / 'f'}", None)
    data.check_available("npz:d.npz", None, base_dir=tmp_path)
    assert "no train/ folder" in one_line_error(lambda: data.check_available(f"imagefolder:{tmp_path}", None))
    assert "has no x_train" in one_line_error(lambda: (np.savez(tmp_path / "e.npz", y=y),
                                                       data.check_available(f"npz:{tmp_path / 'e.npz'}", None)))


def test_cli(tmp_path, digits, capsys):
    x, y = digits
    write_folder(tmp_path, "train", x, y)
    assert data.main([f"imagefolder:{tmp_path}", "--image-size", "16", "--val-fraction", "0.25"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"imagefolder:{tmp_path} train: x (30, 1, 16, 16) uint8, y (30,) int64, 10 classes",
        f"imagefolder:{tmp_path} val: x (10, 1, 16, 16) uint8, y (10,) int64, 10 classes",
        f"imagefolder:{tmp_path} test: x (10, 1, 16, 16) uint8, y (10,) int64, 10 classes"]
    assert data.main([f"npz:{tmp_path / 'none.npz'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.npz: no such file" in err
    with pytest.raises(SystemExit) as ex:
        data.main(["svhn"])
    assert ex.value.code == 2 and "unknown dataset 'svhn'" in capsys.readouterr().err
