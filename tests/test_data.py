"""Loaders, splits and failure messages of trainables.data, on files written in the real formats."""
from __future__ import annotations

import gzip
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.fake_datasets import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    IDX_FILES,
    write_cifar10,
    write_cifar100,
    write_mnist,
)
from trainables import data
from trainables.data import DataError, prepare, split_indices

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _official_to_split(n: int, val_fraction: float, seed: int, k: int) -> tuple[str, int]:
    """Where official training example k lands: ("train"|"val", row in that split)."""
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    if k in train_idx:
        return "train", int(np.searchsorted(train_idx, k))
    return "val", int(np.searchsorted(val_idx, k))


# --- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_shapes_labels_classes_stats(tmp_path):
    write_cifar10(tmp_path)
    ds = prepare("cifar10", tmp_path, download=False)
    assert ds.x_train.shape == (90, 3, 32, 32) and ds.x_val.shape == (10, 3, 32, 32)
    assert ds.x_test.shape == (20, 3, 32, 32)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.y_train.shape == (90,) and ds.y_val.shape == (10,) and ds.y_test.shape == (20,)
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)
    assert ds.val_fraction == 0.1 and ds.split_seed == 0


def test_cifar10_pixels_round_trip_from_written_bytes(tmp_path):
    write_cifar10(tmp_path)
    ds = prepare("cifar10", tmp_path, val_fraction=0.2, split_seed=3, download=False)
    folder = tmp_path / "cifar-10-batches-py"
    raw = _unpickle(folder / "data_batch_3")  # official train example 47 = batch 3, row 7
    row, label = raw[b"data"][7], raw[b"labels"][7]
    split, pos = _official_to_split(100, 0.2, 3, 47)
    img = getattr(ds, f"x_{split}")[pos]
    assert getattr(ds, f"y_{split}")[pos] == label
    for c, h, w in [(0, 0, 0), (1, 5, 17), (2, 31, 31), (2, 8, 3), (0, 20, 30)]:
        assert img[c, h, w] == row[c * 1024 + h * 32 + w]  # CHW row-major
    np.testing.assert_array_equal(img.reshape(-1), row)
    # the class block is where the writer put it: label % 16 on a 4x4 grid of 8x8 cells
    r, q = divmod(label % 16, 4)
    assert img[0, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8].min() >= 200
    test = _unpickle(folder / "test_batch")
    np.testing.assert_array_equal(ds.x_test, test[b"data"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.y_test, test[b"labels"])


def test_cifar100_shapes_labels_pixels(tmp_path):
    write_cifar100(tmp_path, n_train=50, n_test=20, seed=4)
    ds = prepare("cifar100", tmp_path, val_fraction=0.1, split_seed=0, download=False)
    assert ds.x_train.shape == (45, 3, 32, 32) and ds.x_val.shape == (5, 3, 32, 32)
    assert ds.x_test.shape == (20, 3, 32, 32) and ds.x_test.dtype == np.uint8
    assert ds.classes == CIFAR100_CLASSES and ds.num_classes == 100
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    raw = _unpickle(tmp_path / "cifar-100-python" / "train")
    split, pos = _official_to_split(50, 0.1, 0, 12)
    np.testing.assert_array_equal(getattr(ds, f"x_{split}")[pos], raw[b"data"][12].reshape(3, 32, 32))
    assert getattr(ds, f"y_{split}")[pos] == raw[b"fine_labels"][12]  # fine, not coarse, labels
    test = _unpickle(tmp_path / "cifar-100-python" / "test")
    np.testing.assert_array_equal(ds.y_test, test[b"fine_labels"])


def test_split_leaves_test_set_alone_and_partitions_train(tmp_path):
    write_cifar10(tmp_path)
    a = prepare("cifar10", tmp_path, val_fraction=0.1, split_seed=0, download=False)
    b = prepare("cifar10", tmp_path, val_fraction=0.3, split_seed=9, download=False)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    official = np.concatenate([_unpickle(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}")[b"data"]
                               for i in range(1, 6)])
    for ds in (a, b):
        rows = np.concatenate([ds.x_train, ds.x_val]).reshape(-1, 3072)
        assert sorted(map(bytes, rows)) == sorted(map(bytes, official))
    assert len(b.y_val) == 30 and len(b.y_train) == 70


# --- MNIST / Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist"])
def test_idx_loaders(tmp_path, kind, gz):
    write_mnist(tmp_path, kind=kind, n_train=60, n_test=20, seed=2, gz=gz)
    ds = prepare(kind, tmp_path, val_fraction=0.25, split_seed=1, download=False)
    assert ds.x_train.shape == (45, 1, 28, 28) and ds.x_val.shape == (15, 1, 28, 28)
    assert ds.x_test.shape == (20, 1, 28, 28) and ds.x_train.dtype == np.uint8 and ds.y_val.dtype == np.int64
    assert ds.classes == (tuple(str(i) for i in range(10)) if kind == "mnist" else FASHION)
    assert (ds.mean, ds.std) == (((0.1307,), (0.3081,)) if kind == "mnist" else ((0.2860,), (0.3530,)))
    folder = tmp_path / ("MNIST" if kind == "mnist" else "FashionMNIST") / "raw"
    suffix = ".gz" if gz else ""
    assert data.expected_files(kind, tmp_path) == [folder / (f + suffix) for f in IDX_FILES]

    def raw(name):
        path = folder / (name + suffix)
        return gzip.decompress(path.read_bytes()) if gz else path.read_bytes()

    images, labels = raw("train-images-idx3-ubyte"), raw("train-labels-idx1-ubyte")
    assert images[:4] == b"\x00\x00\x08\x03" and images[4:8] == (60).to_bytes(4, "big")
    k = 33
    split, pos = _official_to_split(60, 0.25, 1, k)
    img = getattr(ds, f"x_{split}")[pos, 0]
    assert img[14, 9] == images[16 + k * 784 + 14 * 28 + 9]
    assert img.tobytes() == images[16 + k * 784:16 + (k + 1) * 784]
    assert getattr(ds, f"y_{split}")[pos] == labels[8 + k]
    np.testing.assert_array_equal(ds.y_test, np.frombuffer(raw("t10k-labels-idx1-ubyte")[8:], np.uint8))
    assert all(a.flags.writeable and a.flags.c_contiguous for a in (ds.x_train, ds.x_val, ds.x_test, ds.y_test))


def test_plain_idx_preferred_over_gz(tmp_path):
    write_mnist(tmp_path, seed=1, gz=True)
    write_mnist(tmp_path, seed=0, gz=False)
    ds = prepare("mnist", tmp_path, download=False)
    folder = tmp_path / "MNIST" / "raw"
    assert data.expected_files("mnist", tmp_path)[0] == folder / "train-images-idx3-ubyte"
    images = (folder / "t10k-images-idx3-ubyte").read_bytes()
    np.testing.assert_array_equal(ds.x_test.reshape(-1), np.frombuffer(images[16:], np.uint8))


@pytest.mark.parametrize("fname,gz", [("train-labels-idx1-ubyte", False), ("t10k-images-idx3-ubyte", True)])
def test_corrupted_idx_magic_names_the_file(tmp_path, fname, gz):
    write_mnist(tmp_path, gz=gz)
    path = tmp_path / "MNIST" / "raw" / (fname + (".gz" if gz else ""))
    content = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    content = b"\x00\x00\x08\x02" + content[4:]
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError) as err:
        prepare("mnist", tmp_path, download=False)
    msg = str(err.value)
    assert str(path) in msg and "0x00000802" in msg and "\n" not in msg


def test_truncated_idx_raises(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        prepare("mnist", tmp_path, download=False)


# --- split_indices ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,frac", [(100, 0.1), (1000, 0.25), (37, 0.5), (10, 0.0), (7, 0.9)])
def test_split_indices_partition(n, frac):
    train, val = split_indices(n, frac, seed=5)
    assert len(val) == round(n * frac) and len(train) == n - round(n * frac)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = split_indices(n, frac, seed=5)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)


def test_split_indices_depends_on_seed():
    a = split_indices(1000, 0.2, 0)[1]
    b = split_indices(1000, 0.2, 1)[1]
    assert len(a) == len(b) == 200 and not np.array_equal(a, b)


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_split_indices_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, frac, 0)
    with pytest.raises(DataError, match="^digits: val_fraction"):  # prepare reports it like other data problems
        prepare("digits", None, val_fraction=frac)


# --- digits ----------------------------------------------------------------------------------


def test_digits_fixed_test_set():
    a = prepare("digits", None, val_fraction=0.1, split_seed=0)
    b = prepare("digits", None, val_fraction=0.3, split_seed=7)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert len(a.y_test) == 359 and len(a.y_val) == 144 and len(b.y_val) == round(1438 * 0.3)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = prepare("digits", None, val_fraction=0.1, split_seed=1)
    assert len(c.y_val) == 144 and not np.array_equal(a.x_val, c.x_val)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64
    assert a.x_train.max() == 255 and a.x_train.min() == 0
    assert set(np.unique(a.x_train)) <= {round(v * 255 / 16) for v in range(17)}
    assert a.classes == tuple("0123456789") and a.num_classes == 10 and data.expected_files("digits", None) == []
    pix = a.x_train / 255.0
    assert a.mean == pytest.approx((pix.mean(),)) and a.std == pytest.approx((pix.std(),))
    assert 0.2 < a.mean[0] < 0.4  # digits are mostly dark background


# --- missing files and downloads -------------------------------------------------------------


@pytest.mark.parametrize("name,folder,fname,url", [
    ("cifar10", "cifar-10-batches-py", "data_batch_1", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    ("cifar100", "cifar-100-python", "train", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte", "http://yann.lecun.com/exdb/mnist/"),
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte", "https://github.com/zalandoresearch/"),
])
def test_missing_files_message(tmp_path, name, folder, fname, url):
    for call in (lambda: prepare(name, tmp_path, download=False), lambda: data.check_available(name, tmp_path)):
        with pytest.raises(DataError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{name}: missing ")
        assert str(tmp_path / folder / fname) in msg and url in msg
        assert f"python -m trainables.data {name} --data-dir {tmp_path}" in msg
    assert not any(tmp_path.iterdir())  # nothing created: no download, no lock


def test_missing_message_counts_the_rest(tmp_path):
    write_cifar10(tmp_path)
    for f in ("data_batch_2", "data_batch_5", "test_batch", "batches.meta"):
        (tmp_path / "cifar-10-batches-py" / f).unlink()
    with pytest.raises(DataError, match=r"missing \S+data_batch_2, \S+data_batch_5 \(and 2 more\)"):
        data.check_available("cifar10", tmp_path)


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any connection attempt and record calls into the download step."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(("socket", args))
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    real = data._download
    monkeypatch.setattr(data, "_download", lambda *a: (calls.append(("download", a)), real(*a)))
    return calls


def test_offline_env_prevents_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TUNE_APP_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        prepare("cifar10", tmp_path / "d", download=True)
    assert no_network == []
    assert "TUNE_APP_OFFLINE=1" in str(err.value) and "download failed" not in str(err.value)
    assert not (tmp_path / "d").exists()


def test_failed_download_becomes_one_line_data_error(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    def broken(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x, got:\n404")

    monkeypatch.delenv("TUNE_APP_OFFLINE", raising=False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", broken)
    with pytest.raises(DataError) as err:
        prepare("mnist", tmp_path, download=True)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert msg.endswith("(download failed: RuntimeError: Error downloading train-images-idx3-ubyte.gz: ... 404)")
    assert [c[0] for c in no_network] == ["download"]
    assert (tmp_path / ".tune_app_download.lock").exists()


def test_download_then_load(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    seen = []

    def fake_cifar(root, train, download):  # stands in for torchvision's download + extract
        seen.append((root, train, download))
        write_cifar10(root)

    monkeypatch.delenv("TUNE_APP_OFFLINE", raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar)
    ds = prepare("cifar10", tmp_path / "new", download=True)
    assert seen == [(str(tmp_path / "new"), True, True), (str(tmp_path / "new"), False, True)]
    assert ds.x_train.shape == (90, 3, 32, 32)
    prepare("cifar10", tmp_path / "new", download=True)  # files present now: no second download
    assert len(seen) == 2


def test_download_failure_reason_is_the_first_line(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    def broken(root, train, download):
        raise OSError("disk full\nwhile extracting")

    monkeypatch.delenv("TUNE_APP_OFFLINE", raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", broken)
    with pytest.raises(DataError, match=r"cifar-100-python/train, .* \(download failed: OSError: disk full\)$"):
        prepare("cifar100", tmp_path, download=True)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; known: digits, cifar10"):
        data.expected_files("svhn", "/nowhere")


# --- sweep view, fingerprint, CLI ------------------------------------------------------------


def test_sweep_view_has_no_test_set(tmp_path):
    write_cifar100(tmp_path)
    ds = prepare("cifar100", tmp_path, download=False)
    view = ds.sweep_view()
    assert set(view) == {"name", "x_train", "y_train", "x_val", "y_val", "classes", "mean", "std",
                         "num_classes", "input_shape", "fingerprint"}
    assert not any(v is ds.x_test or v is ds.y_test for v in view.values())
    assert view["num_classes"] == 100 and view["input_shape"] == (3, 32, 32)
    assert view["fingerprint"] == ds.fingerprint() and view["x_val"] is ds.x_val


def test_fingerprint(tmp_path):
    write_mnist(tmp_path)
    a = prepare("mnist", tmp_path, split_seed=0, download=False)
    a2 = prepare("mnist", tmp_path, split_seed=0, download=False)
    b = prepare("mnist", tmp_path, split_seed=1, download=False)
    c = prepare("mnist", tmp_path, split_seed=0, val_fraction=0.2, download=False)
    assert a.fingerprint() == a2.fingerprint() and len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3
    write_mnist(tmp_path / "other", seed=1)
    assert prepare("mnist", tmp_path / "other", download=False).fingerprint() != a.fingerprint()


def test_cli(tmp_path, capsys, monkeypatch):
    write_mnist(tmp_path, kind="fashion_mnist", gz=True)
    assert data.main(["fashion_mnist", "--data-dir", str(tmp_path), "--val-fraction", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["fashion_mnist train: x (30, 1, 28, 28) uint8, y (30,) int64, 10 classes",
                     "fashion_mnist val: x (30, 1, 28, 28) uint8, y (30,) int64, 10 classes",
                     "fashion_mnist test: x (20, 1, 28, 28) uint8, y (20,) int64, 10 classes"]
    monkeypatch.setenv("TUNE_APP_OFFLINE", "1")
    assert data.main(["cifar10", "--data-dir", str(tmp_path / "none")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "cifar-10-batches-py" in captured.err


# --- the fake datasets themselves ------------------------------------------------------------


def test_fake_writers_deterministic(tmp_path):
    for writer in (write_cifar10, write_cifar100, lambda r, seed: write_mnist(r, gz=True, seed=seed)):
        same = [writer(tmp_path / f"{writer.__name__}{i}", seed=3) for i in range(2)]
        other = writer(tmp_path / f"{writer.__name__}x", seed=4)
        assert same[0] == tmp_path / f"{writer.__name__}0"
        files = sorted(p.relative_to(same[0]) for p in same[0].rglob("*") if p.is_file())
        assert files and all((same[0] / f).read_bytes() == (same[1] / f).read_bytes() for f in files)
        assert any((same[0] / f).read_bytes() != (other / f).read_bytes() for f in files)


@pytest.mark.parametrize("name,writer", [("cifar10", write_cifar10), ("mnist", write_mnist)])
def test_fake_images_are_learnable(tmp_path, name, writer):
    """A nearest-centroid classifier should beat chance (10 %) by far on held-out fakes."""
    writer(tmp_path, n_test=100)
    ds = prepare(name, tmp_path, download=False)
    x = ds.x_train.reshape(len(ds.x_train), -1).astype(float)
    centroids = np.stack([x[ds.y_train == c].mean(0) for c in range(10)])
    xt = ds.x_test.reshape(len(ds.x_test), -1).astype(float)
    pred = np.argmin(((xt[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_test).mean() >= 0.9


def test_split_that_leaves_no_training_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="leaves none for training"):
        split_indices(1, 0.6, 0)
    write_cifar10(tmp_path, n_train_per_batch=1)
    with pytest.raises(DataError, match="^cifar10: val_fraction 0.95 of 5 examples leaves none for training$"):
        prepare("cifar10", tmp_path, val_fraction=0.95, download=False)
    assert len(prepare("cifar10", tmp_path, val_fraction=0.5, download=False).y_train) == 3  # round(2.5) == 2


def test_file_datasets_need_a_data_dir():
    with pytest.raises(DataError, match="^mnist: no --data-dir given; it is the folder holding MNIST/raw/$"):
        prepare("mnist", None, download=False)
