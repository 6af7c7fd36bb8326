"""Study 3 carried to MNIST: the NumPy MLP's space on MNIST.

    python -m tune_app.search --space mnist_mlp

The same values as ``fashion_mnist_mlp``; study 3 allowed itself 3 configurations here,
chosen from what Fashion-MNIST taught (``--num-samples 3``).
"""
from search_spaces.fashion_mnist_mlp import CURVES_BY  # noqa: F401  (same comparison as on Fashion-MNIST)
from search_spaces.fashion_mnist_mlp import SETTINGS as FASHION_SETTINGS
from search_spaces.fashion_mnist_mlp import SPACE as FASHION_SPACE

TRAINABLE = "numpy_mlp"
METRIC, MODE = "val_acc", "max"
SPACE = {**FASHION_SPACE, "dataset": "mnist"}
SETTINGS = {**FASHION_SETTINGS, "num_samples": 3}
