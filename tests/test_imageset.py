"""Images to predict for a submission: a folder of image files or an .npy array, read back exactly."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tune_app.imageset import ImageSetError, read_images, write_submission


def rgb(seed, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_a_folder_is_read_in_file_name_order_with_the_stems_as_ids(tmp_path):
    pictures = {"b_2": rgb(2), "a_1": rgb(1), "c_3": rgb(3)}
    for stem, a in pictures.items():
        Image.fromarray(a).save(tmp_path / f"{stem}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ids, x = read_images(tmp_path, (3, 32, 32))
    assert ids == ["a_1", "b_2", "c_3"] and x.dtype == np.uint8 and x.shape == (3, 3, 32, 32)
    for i, stem in enumerate(ids):
        assert np.array_equal(x[i], pictures[stem].transpose(2, 0, 1))  # PNG is lossless


def test_a_grayscale_model_gets_one_channel_from_colour_files(tmp_path):
    Image.fromarray(rgb(0, 28, 28)).save(tmp_path / "0.png")
    _, x = read_images(tmp_path, (1, 28, 28))
    expected = np.asarray(Image.fromarray(rgb(0, 28, 28)).convert("L"))
    assert x.shape == (1, 1, 28, 28) and np.array_equal(x[0, 0], expected)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_an_npy_array_in_either_layout_gets_row_numbers_as_ids(tmp_path, layout):
    nhwc = np.stack([rgb(i) for i in range(4)])
    np.save(tmp_path / "x.npy", nhwc if layout == "nhwc" else nhwc.transpose(0, 3, 1, 2))
    ids, x = read_images(tmp_path / "x.npy", (3, 32, 32))
    assert ids == ["0", "1", "2", "3"] and np.array_equal(x, nhwc.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "x.npy", np.zeros((2, 28, 28, 3), np.uint8)), "images of shape (28, 28, 3); the model "
                                                                          "takes (3, 32, 32)"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 3, 32, 32), np.float32)), "dtype float32; give uint8"),
    (lambda d: Image.fromarray(rgb(0, 16, 16)).save(d / "x.png"), "x.png is 16x16 pixels; the model takes 32x32"),
    (lambda d: (d / "x.png").write_bytes(b"not a png"), "x.png is not a readable image"),
    (lambda d: [Image.fromarray(rgb(0)).save(d / f"x{ext}") for ext in (".png", ".jpg")], "two files are named x.*"),
    (lambda d: None, "the folder holds no image files"),
])
def test_bad_image_sets_are_one_line(tmp_path, make, message):
    make(tmp_path)
    target = tmp_path / "x.npy" if (tmp_path / "x.npy").exists() else tmp_path
    with pytest.raises(ImageSetError) as e:
        read_images(target, (3, 32, 32))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_submission_is_id_label_in_the_given_order(tmp_path):
    write_submission(tmp_path / "s.csv", ["b", "a"], np.array([7, 3]))
    assert (tmp_path / "s.csv").read_text() == "id,label\nb,7\na,3\n"
    assert pd.read_csv(tmp_path / "s.csv")["label"].dtype == np.int64
