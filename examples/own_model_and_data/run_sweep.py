"""The whole path from Python: sweep, look at the results, retrain the winner, predict with it.

    python make_images.py     # once: writes digits_png/
    python run_sweep.py       # from this folder (digits_png is found relative to it)

Smaller, for a quick check: ``python run_sweep.py --num-samples 2 --epochs 2 --seeds 1``.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import tune_app


def read_test_images(folder: Path, classes: list[str]):
    """Every test PNG as uint8 (N, 1, H, W) and its label, the class index in the model's ``classes``."""
    images, labels = [], []
    for name in classes:
        for file in sorted((folder / "test" / name).glob("*.png")):
            images.append(np.asarray(Image.open(file).convert("L"))[None])  # (1, H, W): one channel
            labels.append(classes.index(name))
    return np.stack(images), np.array(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, help="trials (default: the space's SETTINGS, 8)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the space's, 10)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the retrain (default 2)")
    parser.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default="disabled")
    args = parser.parse_args()
    if not Path("digits_png/train").is_dir():
        sys.exit("no digits_png/ here: run `python make_images.py` first, in this folder")

    overrides = {"epochs": args.epochs} if args.epochs else {}
    try:
        # 1. The sweep: the same as `python -m tune_app.search --space ./space.py`, analysis included.
        sweep = tune_app.sweep("space.py", num_samples=args.num_samples, set=overrides,
                               wandb_mode=args.wandb_mode)
        print(f"\nRun directory: {sweep.run_dir}")
        print("Best configuration:")
        for key, value in sweep.best_config.items():
            print(f"  {key}: {value}")
        columns = ["name", "status", "epochs", "config/model.width", "config/optimizer", "config/lr", "final_val_acc"]
        print("Top trials by validation accuracy:")
        print(sweep.trials.sort_values("final_val_acc", ascending=False)[columns].head(5).to_string(index=False))

        # 2. Retrain the winner with new seeds and measure it on the test images the search never saw.
        result = tune_app.retrain(sweep.run_dir, seeds=args.seeds, wandb_mode=args.wandb_mode)
        kept = result["configs"][0]
        print(f"Retrain over {len(kept['seeds'])} seeds: test accuracy {kept['test_acc']['mean']:.4f} (mean); "
              f"the kept model (seed {result['model']['seed']}): {result['model']['test_acc']:.4f}")

        # 3. The kept model, loaded from runs/<name>/retrain/model.pt, on images read here.
        model = tune_app.load_model(sweep.run_dir)
    except tune_app.UsageError as e:  # bad input: one line says what to change
        sys.exit(f"error: {e}")
    images, labels = read_test_images(Path("digits_png"), model.classes)
    few = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]  # the first test image of each class
    predicted = model.predict(images[few])
    print("A few test images (true -> predicted):",
          ", ".join(f"{model.classes[t]} -> {model.classes[p]}" for t, p in zip(labels[few], predicted)))
    loss, accuracy = model.evaluate(images, labels)
    print(f"Test accuracy of the loaded model on all {len(labels)} test images: {accuracy:.4f} (loss {loss:.4f})")


if __name__ == "__main__":
    main()
