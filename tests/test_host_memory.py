"""Freed host memory goes back to the system (glibc keeps freed heap blocks resident otherwise)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")

# In a fresh process, so that the heap's layout is this scenario's alone.
SCENARIO = """
import torch
from vexpress_core.host_memory import release_freed_host_memory

MIB = 2**20

def resident_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024

threshold_raiser = torch.ones(24 * MIB // 4)  # served by mmap; freeing it raises the mmap threshold
del threshold_raiser
blocks, pins = [], []
for _ in range(64):
    blocks.append(torch.ones(2 * MIB // 4))  # 2 MiB each, now from the heap
    pins.append(torch.ones(64))  # small live blocks between them: the heap cannot shrink from its top
del blocks
freed = resident_bytes()
released = release_freed_host_memory()
print(released, (freed - resident_bytes()) // MIB)
"""


def test_freed_heap_blocks_leave_the_process():
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    released, returned_mib = done.stdout.split()
    assert released == "True"
    assert int(returned_mib) >= 96  # of the 128 MiB freed
