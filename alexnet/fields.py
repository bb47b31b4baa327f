"""Type and range checks of what a checkpoint or exported file says besides its weights.

A file's metadata decides allocations and arithmetic before any weight is used: a resize size of
a million pixels, a statistic of the wrong length, a standard deviation of 0 or a NaN mean would
give a memory error, a traceback or predictions of `nan%`. `check_fields` looks at every field
when the file is opened and names the first bad one in one line (UserError).

    classes      {"ids": [str], "names": [str] (as many as ids, or none)}
    preprocess   {"crop", "size": whole numbers in 1..MAX_SIDE, crop <= size; "normalize", "resize": names}
    stats        channel_mean, channel_std, caffe_mean_bgr, eigval: 3 finite numbers (std > 0);
                 eigvec (3, 3); mean_image, mean_image_bgr (S, S, 3) with S <= MAX_SIDE; all finite
"""

from __future__ import annotations

import numpy as np

from alexnet.data.images import MAX_SIDE
from alexnet.errors import UserError

SHAPES = {"channel_mean": (3,), "channel_std": (3,), "caffe_mean_bgr": (3,), "eigval": (3,), "eigvec": (3, 3)}
IMAGES = ("mean_image", "mean_image_bgr")  # (S, S, 3)


def damaged(where: str, what: str) -> UserError:
    return UserError(f"{where}: damaged metadata: {what}")


def check_fields(state: dict) -> None:
    """UserError naming the file and the first ill-typed or out-of-range field of a checkpoint
    dict's classes, preprocess and stats (each may be missing: defaults apply)."""
    where = str(state.get("path", "checkpoint"))
    check_classes(state.get("classes"), where)
    check_preprocess_fields(state.get("preprocess"), where)
    check_stats(state.get("stats"), where)


def check_classes(classes, where: str) -> None:
    if classes is None:
        return
    if not isinstance(classes, dict):
        raise damaged(where, f"classes is a {type(classes).__name__}, not a dict of ids and names")
    for key in ("ids", "names"):
        values = classes.get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)):
            raise damaged(where, f"classes.{key} is a {type(values).__name__}, not a list of strings")
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise damaged(where, f"classes.{key}[{bad}] is {values[bad]!r}, not a string")
    ids, names = classes.get("ids") or [], classes.get("names") or []
    if names and ids and len(names) != len(ids):
        raise damaged(where, f"{len(ids)} class ids but {len(names)} class names")


def whole(value, name: str, where: str, maximum: int) -> int:
    """`value` as an int in 1..maximum, else the damaged-metadata UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= maximum:
        raise damaged(where, f"{name} is {value!r}, not a whole number in 1..{maximum}")
    return int(value)


def check_preprocess_fields(pre, where: str) -> None:
    if pre is None:
        return
    if not isinstance(pre, dict):
        raise damaged(where, f"preprocess is a {type(pre).__name__}, not a dict")
    for key in ("crop", "size"):
        if pre.get(key) is not None:
            whole(pre[key], f"preprocess.{key}", where, MAX_SIDE)
    if pre.get("crop") is not None and pre.get("size") is not None and pre["crop"] > pre["size"]:
        raise damaged(where, f"preprocess.crop {pre['crop']} is larger than its image size {pre['size']}")
    for key in ("normalize", "resize"):
        if pre.get(key) is not None and not isinstance(pre[key], str):
            raise damaged(where, f"preprocess.{key} is {pre[key]!r}, not a name")


def check_stats(stats, where: str) -> None:
    if stats is None:
        return
    if not isinstance(stats, dict):
        raise damaged(where, f"stats is a {type(stats).__name__}, not a dict of arrays")
    for key, value in stats.items():
        if value is None:
            continue
        if not isinstance(key, str):
            raise damaged(where, f"stats key {key!r} is not a name")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise damaged(where, f"stats.{key} is not an array of numbers") from None
        shape = SHAPES.get(key)
        if key in IMAGES:
            if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] != array.shape[1] or array.shape[0] > MAX_SIDE:
                raise damaged(where, f"stats.{key} has shape {array.shape}, not (S, S, 3) with S <= {MAX_SIDE}")
        elif shape is not None and array.shape != shape:
            raise damaged(where, f"stats.{key} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            raise damaged(where, f"stats.{key} holds NaN or infinite values")
        if key == "channel_std" and not (array > 0).all():
            raise damaged(where, f"stats.channel_std is {array.tolist()}: every channel's must be > 0")
