"""Host memory that large temporary tensors have freed, handed back to the operating system.

glibc's allocator serves blocks up to 32 MB from its heap once a large block has been freed (its
mmap threshold rises to the size of that block), and a fragmented heap keeps what was freed:
loading a network tensor by tensor, or encoding minutes of speech, leaves hundreds of MB resident
that no live tensor uses. `malloc_trim` returns those pages. Elsewhere (macOS, Windows, musl) this
is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_host_memory() -> bool:
    """Returns the heap's free pages to the system; True when the allocator supports it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
