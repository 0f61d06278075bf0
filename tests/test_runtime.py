"""visiontransfer.runtime: glibc's allocator keeps freed memory, so a training step's large blocks
stop faulting their pages in again every step; opt-outs are respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from visiontransfer import runtime

# A training step in small: 4 blocks of 64 MiB (each over glibc's largest mmap threshold) made and
# freed; 8 steps to settle, then the page faults of 4 more.
PROBE = """
import json, resource, sys, torch
from visiontransfer.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    blocks = [torch.full((16 * 2**20,), 1.0) for _ in range(4)]
    return sum(float(b[0]) for b in blocks)
for _ in range(8):
    step()
start = faults()
for _ in range(4):
    step()
print(json.dumps({"applied": applied, "faults": faults() - start}))
"""


def probe(mode: str, **env: str) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in (*runtime.USER_SETTINGS, runtime.OPT_OUT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_without_faulting_their_pages_again() -> None:
    default = probe("default")
    tuned = probe("tuned")
    assert tuned["applied"] is True
    assert default["faults"] > 4 * 60_000, default  # each step faults its 256 MiB in again
    assert tuned["faults"] < 1_000, tuned  # the same memory, kept in the process


def test_opt_outs_leave_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in runtime.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(runtime.OPT_OUT, "system")
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv(runtime.OPT_OUT)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")  # the user's own glibc setting wins
    assert runtime.keep_freed_memory() is False
