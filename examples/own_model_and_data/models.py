"""My model: a small CNN for small grayscale or colour images (8x8 digits here).

tune_app builds it as ``SmallCNN(num_classes=..., input_shape=(C, H, W), width=..., dropout=...)``:
``num_classes`` and ``input_shape`` come from the dataset, ``width`` and ``dropout`` from the space's
``model.width`` and ``model.dropout`` keys. ``forward`` takes normalized float images (N, C, H, W)
and returns one logit per class, (N, num_classes).
"""
from torch import nn


class SmallCNN(nn.Module):
    """conv(width) -> conv(2 width) -> max-pool -> 4x4 average pool -> dropout -> linear."""

    def __init__(self, num_classes, input_shape, width=16, dropout=0.0):
        super().__init__()
        channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),  # 4x4 whatever the image size, so the head's size is fixed
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width * 16, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
