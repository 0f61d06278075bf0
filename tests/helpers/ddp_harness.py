"""Run many DDP jobs in one launch of 2 processes (gloo, CPU), as ``torchrun`` would start them.

Starting Python with torch and Lightning costs ~15 s of CPU here, so a test file gathers its DDP
jobs (functions of the helper modules, called as ``fn(devices=2, **kwargs)``) and runs them all in
one pair of processes: each process gets ``LOCAL_RANK`` (and the rendezvous address), so
Lightning's DDP uses the processes it finds instead of starting its own, and every ``Trainer``
after the first reuses the process group. The 1-process reference runs of the same functions run
in the test process itself. Lightning's own launcher (which re-runs the command line) is covered
by the tests that run ``visiontransfer`` with ``--trainer.devices 2`` (``tests/test_ddp.py``).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parent
REPO = HELPERS.parents[1]


def job(fn: str, **kwargs: Any) -> dict[str, Any]:
    """A job: ``fn`` as ``module:function`` (a module of tests/helpers), called with ``kwargs``."""
    return {"fn": fn, "kwargs": kwargs}


def call(spec: dict[str, Any], devices: int) -> Any:
    """Run one job with ``devices`` processes (in this process: the caller launched the others)."""
    module, _, name = spec["fn"].partition(":")
    return getattr(importlib.import_module(module), name)(devices=devices, **spec["kwargs"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(jobs: list[dict[str, Any]], folder: Path, world_size: int = 2, timeout: int = 900) -> None:
    """Run ``jobs`` in order in ``world_size`` fresh processes; fail with their stderr if any fails."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs_file = folder / "ddp_jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(HELPERS), str(REPO)]), OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world_size), NODE_RANK="0",
    )  # fmt: skip
    command = [sys.executable, "-m", "ddp_harness", str(jobs_file)]
    logs = [folder / f"rank{r}.log" for r in range(world_size)]
    processes = []
    for r, log in enumerate(logs):  # files, not pipes: a full pipe would stall a rank in a collective
        with log.open("w") as handle:
            rank_env = {**env, "LOCAL_RANK": str(r)}
            process = subprocess.Popen(command, cwd=folder, env=rank_env, stdout=handle, stderr=handle)
            processes.append(process)
    codes = [p.wait(timeout=timeout) for p in processes]
    failed = [r for r, code in enumerate(codes) if code]
    assert not failed, "\n".join(f"rank {r} failed:\n{logs[r].read_text()[-4000:]}" for r in failed)


def main(jobs_file: str) -> None:
    import torch.distributed as dist

    world_size = int(os.environ["WORLD_SIZE"])
    try:
        for spec in json.loads(Path(jobs_file).read_text()):
            call(spec, world_size)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
