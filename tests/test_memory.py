"""keep_freed_memory: a large tensor freed and allocated again reuses the same pages, as the
kernel's count of minor page faults shows, instead of mapping and zero-filling fresh ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PAGES = 64 * 2**20 // 4096  # one 64 MB tensor in 4 KB pages: over glibc's largest mmap threshold (32 MB)
SCRIPT = """
import json, resource, torch
from alexnet.memory import keep_freed_memory
took = keep_freed_memory()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([took, faults]))
"""


def _faults(keep: bool) -> tuple[bool, list[int]]:
    """(whether it took effect, minor page faults of each of 20 allocate-fill-free rounds)."""
    env = {**os.environ, "ALEXNET_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    took, faults = json.loads(out.stdout)
    return took, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    off, fresh = _faults(False)
    assert not off and all(n >= 0.9 * PAGES for n in fresh[-8:])  # default malloc: every page faults anew
    took, kept = _faults(True)
    if took:  # glibc: once the heap has grown to fit, the same pages again (the first rounds may still grow it)
        assert sum(n < 0.01 * PAGES for n in kept[-8:]) >= 4, kept
