"""Data stage: source layouts -> `prepare` -> packed directory -> dataset and loader -> augmentation.

Public API (docs/architecture.md holds the on-disk contract):
    PreparedSet(root), PackedDataset(root_or_set, split, transform=None), make_loader(...),
    TrainTransform, EvalTransform (augment.py; batched forms train_batch / eval_batch),
    alexnet.data.prepare.prepare(src, out, ...) and the generated sets in `alexnet.data.synthetic`.
"""

from alexnet.data.augment import EvalTransform, TrainTransform, eval_batch, sample_draws, train_batch
from alexnet.data.images import BadImageError, load_rgb, resize_center_crop
from alexnet.data.packed import Loader, PackedDataset, PreparedSet, make_loader

__all__ = [
    "BadImageError",
    "EvalTransform",
    "Loader",
    "PackedDataset",
    "PreparedSet",
    "TrainTransform",
    "eval_batch",
    "load_rgb",
    "make_loader",
    "resize_center_crop",
    "sample_draws",
    "train_batch",
]
