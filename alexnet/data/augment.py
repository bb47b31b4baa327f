"""The paper's augmentation (§2): random crops + mirrors, PCA colour noise, mean-image subtraction.

Two forms with one source of randomness: `sample_draws` draws crop offsets, flips and PCA alphas;
the per-image transforms (used in loader workers) and the batched tensor ops (`train_batch`,
`eval_batch`, for uint8 batches on any device) apply given draws, so both give the same result for
the same draws. Images are uint8 (3, S, S) with S the prepared size (256, the paper's).
"""

from __future__ import annotations

import numpy as np
import torch

from alexnet.errors import UserError

PCA_MODES = ("paper", "convnet2", "off")
NORMALIZE_MODES = ("mean_image", "channel")
ALPHA_STD = 0.1  # paper §2: alpha_i ~ N(0, 0.1)


class Stats:
    """A prepared set's statistics as float32 tensors (mean image as (3, S, S) on 0-255)."""

    def __init__(self, stats: dict):
        def get(key):
            return None if stats.get(key) is None else torch.as_tensor(np.asarray(stats[key], np.float32))

        mean_image = get("mean_image")
        self.mean_image = None if mean_image is None else mean_image.permute(2, 0, 1).contiguous()
        self.channel_mean, self.channel_std = get("channel_mean"), get("channel_std")
        self.eigval, self.eigvec = get("eigval"), get("eigvec")

    def need(self, name: str, why: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise UserError(f"statistics lack {name}, needed for {why}; re-run `alexnet prepare`")
        return value

    def mirrored_mean(self) -> torch.Tensor:
        """The mean image mirrored left-right (cached): mirrored crops read it directly."""
        if getattr(self, "_mirrored", None) is None:
            self._mirrored = self.need("mean_image", "mean-image subtraction").flip(-1).contiguous()
        return self._mirrored

    def to(self, device) -> Stats:
        out = Stats({})
        for k, v in vars(self).items():
            if not k.startswith("_"):
                setattr(out, k, None if v is None else v.to(device))
        return out


def _stats(stats) -> Stats:
    return stats if isinstance(stats, Stats) else Stats(stats)


def check_options(crop: int, size: int, pca: str = "off", normalize: str = "mean_image") -> None:
    """One-line UserError for a crop outside [1, size] or an unknown pca / normalize mode."""
    if not 1 <= crop <= size:
        raise UserError(f"crop {crop}: must be between 1 and the prepared image size {size}")
    if pca not in PCA_MODES:
        raise UserError(f"pca {pca!r}: choose one of {', '.join(PCA_MODES)}")
    if normalize not in NORMALIZE_MODES:
        raise UserError(f"normalize {normalize!r}: choose one of {', '.join(NORMALIZE_MODES)}")


def sample_draws(n: int, generator: torch.Generator | None = None, *, crop: int, size: int = 256) -> dict:
    """Random draws for n images: y0, x0 (n,) int64 crop corners in [0, size - crop]; flip (n,)
    bool with p = 0.5; alpha (n, 3) float32 ~ N(0, 0.1)."""
    span = size - crop + 1
    return {
        "y0": torch.randint(0, span, (n,), generator=generator),
        "x0": torch.randint(0, span, (n,), generator=generator),
        "flip": torch.rand(n, generator=generator) < 0.5,
        "alpha": torch.randn(n, 3, generator=generator) * ALPHA_STD,
    }


def pca_shift(alpha: torch.Tensor, stats: Stats, pca: str) -> torch.Tensor:
    """Per-image RGB shift (n, 3) on the 0-255 scale: sum_i p_i * alpha_i * lambda_i (paper, on
    [0, 1], hence x255) or alpha_i * sqrt(lambda_i) on 0-255 (cuda-convnet2)."""
    if pca == "off":
        return torch.zeros_like(alpha)
    eigval = stats.need("eigval", "PCA colour noise").to(alpha.device)
    eigvec = stats.need("eigvec", "PCA colour noise").to(alpha.device)
    scale = eigval if pca == "paper" else eigval.sqrt()
    return (alpha * scale) @ eigvec.T * 255.0


def _normalize(patch: torch.Tensor, mean_patch, shift: torch.Tensor, stats: Stats, normalize: str, out=None):
    """patch uint8 or float (..., 3, h, w) on 0-255, shift (..., 3) on 0-255 -> float32, in two
    elementwise passes (the uint8 -> float32 conversion is fused into the first):
    mean_image: patch - mean_patch + shift;  channel: ((patch + shift) / 255 - mean) / std,
    computed as patch * (1 / (255 std)) + (shift / 255 - mean) / std."""
    shift = shift[..., :, None, None]
    if normalize == "mean_image":
        out = torch.sub(patch, mean_patch, out=out) if out is not None else torch.sub(patch, mean_patch)
        return out.add_(shift)
    cm = stats.need("channel_mean", "channel normalisation").to(patch.device)[:, None, None]
    cs = stats.need("channel_std", "channel normalisation").to(patch.device)[:, None, None]
    scale = 1.0 / (255.0 * cs)
    out = torch.mul(patch, scale, out=out) if out is not None else torch.mul(patch, scale)
    return out.add_((shift * (1.0 / 255.0) - cm) / cs)


# ---------------------------------------------------------------- per image


def train_one(x: torch.Tensor, draw: dict, *, stats, crop: int, pca: str = "paper",
              normalize: str = "mean_image", flip: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """uint8 (3, S, S) + one image's draws (scalars / (3,)) -> float32 (3, crop, crop), written
    into `out` when given. Mirroring is done on the uint8 patch (4x less memory traffic), the mean
    image is read mirrored at the mirrored position: the same as mirroring after subtracting."""
    stats = _stats(stats)
    shift = pca_shift(draw["alpha"].reshape(1, 3), stats, pca)[0]
    return _crop_normalize(x, int(draw["y0"]), int(draw["x0"]), flip and bool(draw["flip"]), shift,
                           stats=stats, crop=crop, normalize=normalize, out=out)  # fmt: skip


def _crop_normalize(x: torch.Tensor, y0: int, x0: int, mirrored: bool, shift: torch.Tensor, *, stats: Stats,
                    crop: int, normalize: str, out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """train_one's pixel work for one image, with shift (3,) on 0-255. The uint8 -> float32 copy
    comes first, then float32 - float32 and + shift: the values of _normalize's fused form (a
    uint8 - float32 operation converts the uint8 operand first too), in about half the time, since
    mixed-dtype elementwise ops take PyTorch's slow path on the CPU."""
    patch = x[:, y0 : y0 + crop, x0 : x0 + crop]
    if mirrored:
        patch = patch.flip(-1)
    if out is None:
        out = torch.empty(patch.shape, dtype=torch.float32, device=x.device)
    out.copy_(patch)
    if normalize == "mean_image":
        if mirrored:
            mx = x.shape[-1] - x0 - crop
            out.sub_(stats.mirrored_mean()[:, y0 : y0 + crop, mx : mx + crop])
        else:
            out.sub_(stats.need("mean_image", "mean-image subtraction")[:, y0 : y0 + crop, x0 : x0 + crop])
        return out.add_(shift[:, None, None])
    cm = stats.need("channel_mean", "channel normalisation").to(x.device)[:, None, None]
    cs = stats.need("channel_std", "channel normalisation").to(x.device)[:, None, None]
    out.mul_(1.0 / (255.0 * cs))
    return out.add_((shift[:, None, None] * (1.0 / 255.0) - cm) / cs)


def _crop_normalize_hwc(x: np.ndarray, y0: int, x0: int, mirrored: bool, shift: torch.Tensor, *, stats: Stats,
                        crop: int, normalize: str, out: np.ndarray) -> np.ndarray:  # fmt: skip
    """_crop_normalize on uint8 (S, S, 3) pixels into float32 (3, crop, crop) `out`, with numpy:
    crop and mirror are views of the uint8 pixels, and one strided copy converts the crop to float
    while it moves the channels first (the decoders' (H, W, 3) order to the model's); then the same
    float32 operations in the same order (minus the mean, plus the shift; or times the scale, plus
    the offset), so the values are bit for bit _crop_normalize's. numpy, because a torch operation
    costs microseconds of dispatch each and its strided uint8 -> float copy is twice numpy's."""
    patch = x[y0 : y0 + crop, x0 : x0 + crop]
    if mirrored:
        patch = patch[:, ::-1]
    np.copyto(out, patch.transpose(2, 0, 1), casting="unsafe")
    if normalize == "mean_image":
        if mirrored:
            mx = x.shape[1] - x0 - crop
            mean = stats.mirrored_mean()[:, y0 : y0 + crop, mx : mx + crop]
        else:
            mean = stats.need("mean_image", "mean-image subtraction")[:, y0 : y0 + crop, x0 : x0 + crop]
        np.subtract(out, mean.numpy(), out=out)
        np.add(out, shift.numpy()[:, None, None], out=out)
        return out
    cm = stats.need("channel_mean", "channel normalisation")[:, None, None]
    cs = stats.need("channel_std", "channel normalisation")[:, None, None]
    np.multiply(out, (1.0 / (255.0 * cs)).numpy(), out=out)  # the scale and offset as _crop_normalize computes them
    np.add(out, ((shift[:, None, None] * (1.0 / 255.0) - cm) / cs).numpy(), out=out)
    return out


class TrainTransform:
    """The paper's training transform: random crop, mirror with p = 0.5, PCA colour noise, mean
    image subtracted (or channel mean/std). Call as t(uint8 (3, S, S), generator) -> float32
    (3, crop, crop); all randomness comes from `generator`."""

    def __init__(self, *, stats, crop: int = 227, flip: bool = True, pca: str = "paper",
                 normalize: str = "mean_image"):  # fmt: skip
        check_options(crop, 10**9, pca, normalize)
        self.stats, self.crop, self.flip, self.pca, self.normalize = _stats(stats), crop, flip, pca, normalize
        self._size = None  # the image size checked last (every image of a set has the same)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, out=None) -> torch.Tensor:
        if x.device.type == "cpu" and (out is None or out.device.type == "cpu"):
            if out is None:
                out = torch.empty((3, self.crop, self.crop), dtype=torch.float32)
            self.apply_hwc(x.permute(1, 2, 0).numpy(), generator, out.numpy())
            return out
        size = self._check_size(x.shape[-1])
        draws = sample_draws(1, generator, crop=self.crop, size=size)
        shift = pca_shift(draws["alpha"], self.stats, self.pca)[0]
        mirrored = self.flip and bool(draws["flip"])
        return _crop_normalize(x, int(draws["y0"]), int(draws["x0"]), mirrored, shift, stats=self.stats,
                               crop=self.crop, normalize=self.normalize, out=out)  # fmt: skip

    def _check_size(self, size: int) -> int:
        if size != self._size:
            check_options(self.crop, size)
            self._size = size
        return size

    def apply_hwc(self, x: np.ndarray, generator: torch.Generator | None, out: np.ndarray) -> np.ndarray:
        """The same transform on decoded pixels, uint8 (S, S, 3) as decoders write them, into the
        float32 (3, crop, crop) array `out` (a worker's slot of the batch): the same draws and the
        same values as __call__, in about half the time (see _crop_normalize_hwc)."""
        size = self._check_size(x.shape[1])
        draws = sample_draws(1, generator, crop=self.crop, size=size)
        shift = pca_shift(draws["alpha"], self.stats, self.pca)[0]
        mirrored = self.flip and bool(draws["flip"])
        return _crop_normalize_hwc(x, int(draws["y0"]), int(draws["x0"]), mirrored, shift, stats=self.stats,
                                   crop=self.crop, normalize=self.normalize, out=out)  # fmt: skip


def crop_offsets(size: int, crop: int, crops: int) -> list[tuple[int, int]]:
    """(y0, x0) of the eval crops: the centre, or the paper's 4 corners + centre (TL, TR, BL, BR, C)."""
    c, e = (size - crop) // 2, size - crop
    if crops == 1:
        return [(c, c)]
    if crops == 10:
        return [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
    raise UserError(f"crops {crops}: choose 1 (centre) or 10 (the paper's corners, centre and mirrors)")


class EvalTransform:
    """Centre crop -> (3, crop, crop), or the paper's 10 crops -> (10, 3, crop, crop): the 4 corners
    and the centre, then their mirrors in the same order."""

    def __init__(self, *, stats, crop: int = 227, crops: int = 1, normalize: str = "mean_image"):
        check_options(crop, 10**9, "off", normalize)
        crop_offsets(256, 1, crops)  # validates `crops`
        self.stats, self.crop, self.crops, self.normalize = _stats(stats), crop, crops, normalize

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = eval_batch(x[None], stats=self.stats, crop=self.crop, crops=self.crops, normalize=self.normalize)
        return out[0]


# ---------------------------------------------------------------- batched (any device)


def _gather(x: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, crop: int, flip: torch.Tensor | None):
    """Crops (B, C, crop, crop) of x (B, C, S, S) or of a shared (C, S, S) at per-image corners,
    mirrored where `flip`; one advanced-indexing gather."""
    ar = torch.arange(crop, device=x.device)
    rows = y0.to(x.device)[:, None] + ar  # (B, crop)
    cols = x0.to(x.device)[:, None] + ar
    if flip is not None:
        cols = torch.where(flip.to(x.device)[:, None], cols.flip(-1), cols)
    chans = torch.arange(x.shape[-3], device=x.device)[None, :, None, None]
    if x.dim() == 3:
        return x[chans, rows[:, None, :, None], cols[:, None, None, :]]
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    return x[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def train_batch(x: torch.Tensor, *, stats, crop: int, draws: dict, pca: str = "paper",
                normalize: str = "mean_image", flip: bool = True) -> torch.Tensor:  # fmt: skip
    """Batched train_one: uint8 (B, 3, S, S) on any device + draws for B -> float32 (B, 3, crop, crop)."""
    stats = _stats(stats)
    check_options(crop, x.shape[-1], pca, normalize)
    fl = draws["flip"] if flip else None
    patch = _gather(x, draws["y0"], draws["x0"], crop, fl)
    mean_patch = None
    if normalize == "mean_image":
        mean = stats.need("mean_image", "mean-image subtraction").to(x.device)
        mean_patch = _gather(mean, draws["y0"], draws["x0"], crop, fl)
    shift = pca_shift(draws["alpha"].to(x.device), stats, pca)
    return _normalize(patch, mean_patch, shift, stats, normalize)


def eval_batch(x: torch.Tensor, *, stats, crop: int = 227, crops: int = 1, normalize: str = "mean_image"):
    """uint8 (B, 3, S, S) -> float32 (B, 3, crop, crop), or (B, 10, 3, crop, crop) for 10 crops
    (TL, TR, BL, BR, centre, then the same five mirrored)."""
    stats = _stats(stats)
    check_options(crop, x.shape[-1], "off", normalize)
    mean = stats.need("mean_image", "mean-image subtraction").to(x.device) if normalize == "mean_image" else None
    zero = torch.zeros(3, device=x.device)
    views = []
    for y0, x0 in crop_offsets(x.shape[-1], crop, crops):
        patch = x[:, :, y0 : y0 + crop, x0 : x0 + crop]
        mean_patch = None if mean is None else mean[:, y0 : y0 + crop, x0 : x0 + crop]
        views.append(_normalize(patch, mean_patch, zero, stats, normalize))
    if crops == 1:
        return views[0]
    views += [v.flip(-1) for v in views]
    return torch.stack(views, dim=1)
