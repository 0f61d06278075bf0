"""How a visiontransfer process uses the machine: glibc's allocator tuned for training.

The one home of this rule; the ``visiontransfer`` command (:mod:`visiontransfer.cli`) applies it at
start, and so does ``VisionTransferCLI`` when called from Python. ``VT_MALLOC=system`` opts out.

A training step allocates activations of tens to hundreds of MiB and frees them by the end of the
step. glibc's ``malloc`` serves every block over its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and hands it back with ``munmap`` when freed, and trims the top of its heap, so the next
step faults every page in again: the kernel zeroes it first. Measured on a 2-core CPU (SimCLR,
ResNet-18 with the small-image stem, batch 256, 1,176 CIFAR-10 images, ``benchmarks/vs_lightly.py``):
2 epochs took 17.3 M page faults and 37 s of kernel CPU time by default, 1.2 M and 7 s with freed
memory kept; training images/s rose from 25.6 to 33.1 (3 epochs, medians of 2 runs each), for a
peak PSS of 4.34 GiB instead of 3.52 (the peak is kept rather than given back between steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
"""``mallopt`` parameters (``<malloc.h>``)."""
TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap kept before trimming (``mallopt`` takes an ``int``: 2 GiB)."""
TOP_PAD = 2**30
"""Extra bytes asked of the kernel each time the heap grows (1 GiB, reserved, not resident)."""
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
"""Environment variables with which a user tunes glibc's malloc: when one is set, theirs wins."""
OPT_OUT = "VT_MALLOC"
"""``VT_MALLOC=system`` leaves the allocator as glibc sets it."""


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory in the process: no ``mmap`` per large block
    (``M_MMAP_MAX`` 0), trim only past :data:`TRIM_THRESHOLD`, grow the heap in :data:`TOP_PAD`
    steps. Forked DataLoader workers inherit it.

    Returns:
        Whether it was applied: not with ``VT_MALLOC=system``, when the user set glibc's own
        variables (:data:`USER_SETTINGS`), off Linux, or without glibc (musl has no ``mallopt``).
    """
    if os.environ.get(OPT_OUT, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
