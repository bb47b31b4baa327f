"""`python tests/tiny_trainer.py train ...`: `alexnet train` with one more registered model, "tiny", and
the faults of tests/faults.py ($ALEXNET_TEST_KILL_AT: a point where it kills itself).

The resume tests kill and restart the trainer many times; with a net of a few thousand parameters
(a convolution, max-pooling and dropout, so the dropout RNG stream must resume too) each process
spends its time in the loop's bookkeeping, which is what they test, not in AlexNet's 60M weights.
"""

import sys
from pathlib import Path

from torch import nn

from alexnet import model
from alexnet.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import faults  # noqa: E402  (tests/faults.py)


class Tiny(nn.Module):
    """(N, 3, H, W) -> (N, num_classes): conv 5x5/2 (8 maps), ReLU, max-pool 3/2, 4x4 average, dropout, fc."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(4)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 4 * 4, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


model.MODELS["tiny"] = (lambda num_classes=10: Tiny(num_classes), "a few thousand parameters (tests)")

if __name__ == "__main__":
    faults.install_from_env()
    sys.exit(main(sys.argv[1:]))
