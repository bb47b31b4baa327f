"""Local response normalisation (paper §3.3), fused, with an analytic backward.

    b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ** beta

over `size` adjacent channels centred on i, clipped at the edges of the layer (or of each tower).
`torch.nn.LocalResponseNorm` computes the same thing (with alpha divided by size) through
avg_pool3d on a padded copy and a dozen autograd nodes; this module does it in a few passes.

How it stays fast on a CPU, and on a shared one:
- The channel window sum is 5 shifted adds over a channel-padded buffer whose padding holds
  k / size, so the buffer's window sum is k + alpha * sum a^2 at once (edges included).
- The arithmetic runs block by block (an image, or a band of its rows), each block's temporaries
  staying in cache, and the blocks are shared out dynamically to worker threads whose torch ops are
  single-threaded. A dozen small ops per block, each a parallel region waiting for every intra-op
  thread, cost a scheduler slice per op when another process holds a core; a worker that loses its
  core here only delays its own block while the other worker takes the next.
- Sums and powers are computed in float32 (float64 for float64 inputs), and the result is cast
  back: under bf16 autocast the output is within bf16 rounding of the exact value.
- Without autograd (inference) nothing is saved, and AlexNet's LRN overwrites its input (like
  ReLU(inplace=True)), sparing a fresh 40 MB output per batch.
On CUDA the same arithmetic runs on the whole tensor at once.

Under torch.compile (and torch.export) the module traces `lrn_traceable` instead: the same formula
in plain out-of-place ops (no `out=` into views, no threads), which Dynamo traces into the model's
one graph, autograd differentiates, and inductor fuses into a few kernels for the forward and the
backward. Eager runs keep the blocked kernel above (its CPU speed is what the fused version buys).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

# Elements per block: a block's padded buffer and its temporaries (about 8 MB at 2^19 float32
# elements) stay in cache instead of streaming 40 MB tensors through memory a dozen times, and each
# op is long enough (~0.1 ms) that the Python between ops, which holds the GIL, is a few per cent.
# A batch-1 LRN (290 k elements) is then one block on one worker: cutting it finer so that both
# threads share it measured 3x slower (Python and thread hand-offs per block outweigh the work).
BLOCK_ELEMENTS = 1 << 19


# ----------------------------------------------------------------------------------------------
# The arithmetic, on one block (B, C, H, W) of any size
# ----------------------------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _grouped_empty(a: torch.Tensor, groups: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty (B, G, channels, H, W) tensor with the channels innermost if `a` is channels-last."""
    b, _, h, w = a.shape
    if a.dim() == 4 and a.stride(1) == 1 and a.shape[1] > 1:
        return torch.empty(b, h, w, groups, channels, dtype=dtype, device=a.device).permute(0, 3, 4, 1, 2)
    return torch.empty(b, groups, channels, h, w, dtype=dtype, device=a.device)


def _window_sum(padded: torch.Tensor, size: int, out: torch.Tensor) -> torch.Tensor:
    """out[:, :, i] = sum of padded[:, :, i : i + size] (dim 2 carries size - 1 channels of padding)."""
    c = out.shape[2]
    torch.add(padded[:, :, 0:c], padded[:, :, 1 : c + 1], out=out)
    for shift in range(2, size):
        out.add_(padded[:, :, shift : shift + c])
    return out


def _scale(a: torch.Tensor, size: int, alpha: float, k: float, groups: int) -> torch.Tensor:
    """s = k + alpha * (window sum of a^2) per group, (B, C, H, W) in a's (compute) dtype."""
    c, half = a.shape[1] // groups, size // 2
    padded = _grouped_empty(a, groups, c + 2 * half, a.dtype)
    padded[:, :, :half].fill_(k / size)
    padded[:, :, c + half :].fill_(k / size)
    ag = a.unflatten(1, (groups, c))
    # k/size + alpha * a^2 in one pass: the window of `size` such entries sums to k + alpha * sum a^2
    torch.addcmul(a.new_full((), k / size), ag, ag, value=alpha, out=padded[:, :, half : half + c])
    return _window_sum(padded, size, _grouped_empty(a, groups, c, a.dtype)).flatten(1, 2)


def _inverse_power(s: torch.Tensor, beta: float, inplace: bool = False) -> torch.Tensor:
    """s ** -beta; beta = 0.75 (the paper's) as rsqrt(s) * sqrt(rsqrt(s)), 4x cheaper than pow."""
    if beta == 0.75:
        d = s.rsqrt_() if inplace else torch.rsqrt(s)
        return d.mul_(torch.sqrt(d))
    return s.pow_(-beta) if inplace else torch.pow(s, -beta)


def _forward_block(a: torch.Tensor, out: torch.Tensor, size, alpha, beta, k, groups) -> None:
    """out = a * (k + alpha * window sum a^2) ** -beta, computed in float32; out may be a itself."""
    a = a.to(_compute_dtype(a))
    torch.mul(a, _inverse_power(_scale(a, size, alpha, k, groups), beta, inplace=True), out=out)


def _backward_block(a: torch.Tensor, g: torch.Tensor, grad: torch.Tensor, size, alpha, beta, k, groups) -> None:
    """grad_j = g_j d_j - 2 alpha beta a_j * sum_{i in window(j)} g_i a_i d_i / s_i, with d = s ** -beta.

    (The window is symmetric, so "the i whose window holds j" is "i in window(j)".)"""
    dtype = _compute_dtype(a)
    a, g = a.to(dtype), g.to(dtype)
    s = _scale(a, size, alpha, k, groups)
    d = _inverse_power(s, beta)
    c, half = a.shape[1] // groups, size // 2
    padded = _grouped_empty(a, groups, c + 2 * half, dtype)
    padded[:, :, :half].zero_()
    padded[:, :, c + half :].zero_()
    inner = padded[:, :, half : half + c]
    torch.mul(g.unflatten(1, (groups, c)), a.unflatten(1, (groups, c)), out=inner)
    inner.mul_(torch.div(d, s, out=s).unflatten(1, (groups, c)))  # g a d / s, s no longer needed
    t = _window_sum(padded, size, _grouped_empty(a, groups, c, dtype)).flatten(1, 2)
    torch.addcmul(d.mul_(g), a, t, value=-2.0 * alpha * beta, out=grad)


# ----------------------------------------------------------------------------------------------
# Blocks, and the worker threads that run them
# ----------------------------------------------------------------------------------------------


def _blocks(shape: torch.Size, target: int = BLOCK_ELEMENTS) -> list[tuple[slice, slice]]:
    """(images, rows) slices of about `target` elements: whole images, or bands of an image's rows.

    The channel window never crosses a block (every block holds all channels)."""
    n, c, h, w = shape
    per_image = c * h * w
    if per_image >= target:
        rows = max(1, target // (c * w))
        return [(slice(i, i + 1), slice(r, r + rows)) for i in range(n) for r in range(0, h, rows)]
    images = max(1, target // per_image)
    return [(slice(i, i + images), slice(0, h)) for i in range(0, n, images)]


class _Workers:
    """Threads whose torch ops each run on one intra-op thread (set once per thread, at start).

    torch.set_num_threads is per OS thread for the OpenMP team size, but it also sets the default
    that threads started later pick up, so the caller's setting is restored once all are running.
    """

    def __init__(self, threads: int):
        self.threads, self.pid = threads, os.getpid()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="alexnet-lrn")
        started = threading.Barrier(threads + 1)

        def single_threaded():
            torch.set_num_threads(1)
            started.wait()

        for _ in range(threads):  # the barrier keeps each start on its own thread
            self.pool.submit(single_threaded)
        started.wait()
        torch.set_num_threads(threads)

    def run(self, fn, items) -> None:
        for future in [self.pool.submit(fn, item) for item in items]:
            future.result()


_WORKERS: _Workers | None = None
_WORKERS_LOCK = threading.Lock()


def _workers() -> _Workers | None:
    """The process's LRN workers, matching torch's current thread count (None: run inline)."""
    global _WORKERS
    threads = torch.get_num_threads()
    if threads <= 1:
        return None
    with _WORKERS_LOCK:
        if _WORKERS is None or _WORKERS.threads != threads or _WORKERS.pid != os.getpid():
            # a forked child inherits the object but not its threads: start fresh ones
            _WORKERS = _Workers(threads)
        return _WORKERS


# ----------------------------------------------------------------------------------------------
# Forward, backward, module
# ----------------------------------------------------------------------------------------------


def _run_blocks(fn, tensors: tuple[torch.Tensor, ...]) -> None:
    """fn(*block views of tensors) over the whole (N, C, H, W) tensors: at once on a GPU, else block
    by block on the worker threads."""
    if tensors[0].device.type != "cpu":
        fn(*tensors)
        return
    workers = _workers()  # even one block goes to a worker: one thread, no parallel regions
    blocks = _blocks(tensors[0].shape)
    if workers is None:
        for images, rows in blocks:
            fn(*(t[images, :, rows] for t in tensors))
        return

    def one(block):
        images, rows = block
        with torch.inference_mode():  # worker threads start with autograd on; nothing here is differentiated
            fn(*(t[images, :, rows] for t in tensors))

    workers.run(one, blocks)


def lrn_traceable(a: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """The same LRN in plain differentiable ops for torch.compile: (N, C, H, W) -> same, in a's dtype.

    Sums and powers in float32 (float64 for float64 inputs) as the eager kernel does."""
    c, half = a.shape[1] // groups, size // 2
    x = a.to(_compute_dtype(a))
    sq = (x * x).unflatten(1, (groups, c))  # (N, G, c, H, W)
    padded = torch.nn.functional.pad(sq, (0, 0, 0, 0, half, half))  # zero channels beyond each group's edges
    window = padded[:, :, 0:c]
    for shift in range(1, size):
        window = window + padded[:, :, shift : shift + c]
    s = (window * alpha + k).flatten(1, 2)
    d = torch.rsqrt(s) * torch.sqrt(torch.rsqrt(s)) if beta == 0.75 else torch.pow(s, -beta)
    return (x * d).to(a.dtype)


def lrn(
    a: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The forward alone, no autograd: (N, C, H, W) -> (N, C, H, W) in a's dtype (out may be a)."""
    out = torch.empty_like(a) if out is None else out
    _run_blocks(lambda x, y: _forward_block(x, y, size, alpha, beta, k, groups), (a, out))
    return out


class _LRNFunction(torch.autograd.Function):
    """LRN with the analytic backward. Only the input is saved; s and d are recomputed block by
    block in the backward, cheaper than storing two more activation-sized tensors."""

    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float, groups: int):
        ctx.save_for_backward(a)
        ctx.constants = (size, alpha, beta, k, groups)
        return lrn(a, size, alpha, beta, k, groups)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.constants
        grad = torch.empty_like(a)
        _run_blocks(lambda x, y, z: _backward_block(x, y, z, size, alpha, beta, k, groups), (a, g, grad))
        return grad, None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """The paper's local response normalisation (§3.3), in the paper's convention.

    b_i = a_i / (k + alpha * sum_j a_j^2) ** beta over `size` adjacent channels.
    Note the paper does NOT divide alpha by `size`; `torch.nn.LocalResponseNorm` does, so this
    equals `torch.nn.LocalResponseNorm(size, alpha * size, beta, k)`.
    groups: the window stops at the edges of `groups` equal channel groups (2: each tower of a
    two-GPU net normalised on its own, as the halves of the layer each GPU holds).
    inplace: without autograd (inference), write the result over the input.
    Input/output: (N, C, H, W).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1,
                 inplace: bool = False):  # fmt: skip
        super().__init__()
        if size % 2 != 1:
            raise ValueError("LRN size must be odd: the window is centred on each channel")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(f"LRN over {self.groups} groups needs a channel count divisible by it, got {x.shape[1]}")
        args = (self.size, self.alpha, self.beta, self.k, self.groups)
        if torch.compiler.is_compiling():  # one graph: plain ops that inductor fuses (module docstring)
            return lrn_traceable(x, *args)
        if torch.is_grad_enabled() and x.requires_grad:
            return _LRNFunction.apply(x, *args)
        return lrn(x, *args, out=x if self.inplace else None)  # inference: nothing saved for a backward

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}{groups}"
