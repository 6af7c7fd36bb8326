"""Write scikit-learn's bundled 8x8 digits (no download) as a folder of PNG images:

    python make_images.py                 # -> digits_png/train/<class>/*.png, digits_png/test/<class>/*.png
    python make_images.py --out /tmp/d    # somewhere else

Every fifth image goes to test/ (360 of 1797), the rest to train/ (1437). That is the layout
tune_app's ``imagefolder:PATH`` datasets read: one folder per class, named by the class.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_png", help="folder to write (default: digits_png)")
    out = Path(parser.parse_args().out)

    digits = load_digits()
    counts = {"train": 0, "test": 0}
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = "test" if i % 5 == 0 else "train"
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255, 8-bit grayscale
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")  # a 2-D uint8 array is mode L (grayscale)
        counts[split] += 1
    print(f"wrote {counts['train']} training and {counts['test']} test images of "
          f"{len(digits.target_names)} classes to {out}/")


if __name__ == "__main__":
    main()
