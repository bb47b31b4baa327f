"""Host memory that stays mapped: `keep_freed_memory`, called once by the `alexnet` command.

PyTorch's CPU tensors come from the C library's malloc. glibc serves every block over 32 MB (its
largest mmap threshold) with a fresh mmap and unmaps it on free, so each training step maps and
zero-fills its large activations anew, a page fault per 4 KB. The paper's net has several such
tensors that torchvision's variant does not (conv1's output at batch 32 is 37 MB against
torchvision's 25 MB, which malloc keeps and reuses): measured on a 2-core CPU, the training step
took 12–21 % less time with malloc told to keep freed memory (BENCHMARKS.md, Training step on the
CPU). Freed blocks then stay in the process for the next step, as PyTorch's CUDA caching
allocator does on a GPU; the price is that the process keeps its peak host memory (up to 2 GB
free at the top of the heap) instead of returning it.

glibc only (Linux); elsewhere, or with ALEXNET_KEEP_FREED_MEMORY=0, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept rather than returned (mallopt takes an int)
ENV = "ALEXNET_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep freed ones (no mmap per
    block, no trimming). Process-wide and inherited by forked workers. True if it took effect."""
    if sys.platform != "linux" or os.environ.get(ENV, "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # no mallopt (e.g. musl): leave malloc as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
