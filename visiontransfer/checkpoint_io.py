"""Checkpoints written atomically: a kill or a full disk mid-write never costs the previous one.

Lightning's default writer serialises into memory and then writes the target path through an
``fsspec`` transaction whose temporary file lives in the system temp folder: moving it into
place is a copy (not atomic) when ``/tmp`` is another file system, nothing is ``fsync``-ed, and
a kill leaves the temporary file behind. :class:`AtomicCheckpointIO` streams the checkpoint into
a temporary file beside the target, flushes it to disk, and renames it over the target
(``os.replace`` is atomic on POSIX and Windows within one file system).

The ``visiontransfer`` CLI installs it by default; with a plain Trainer pass
``plugins=[AtomicCheckpointIO()]``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".tmp-"
"""Temporary files are named ``<target><TEMP_SUFFIX><pid>``."""

STALE_AFTER_S = 3600.0
"""Temporary files of dead writers older than this are removed by the next save in the folder."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()
"""The process's file-creation mask, read once at import (reading it means setting it)."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Create ``path`` atomically: ``write(temporary_path)`` fills a temporary file in the same
    folder, which is then renamed over ``path`` (removed if ``write`` fails)."""
    target = Path(path)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~UMASK)  # mkstemp makes it private; a written file is not
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file and an atomic rename.

    Until the rename, ``path`` keeps its previous content (or does not exist).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f"{target.name}{TEMP_SUFFIX}{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_dir(target.parent)
    remove_stale_temporaries(target.parent)


def check_writable(folder: str | os.PathLike[str]) -> str | None:
    """Why files can't be written into ``folder`` (created if missing), or None when they can."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete temporary checkpoint files left in ``folder`` by killed writers; return them."""
    removed = []
    now = time.time()
    for candidate in folder.glob(f"*{TEMP_SUFFIX}*"):
        pid = candidate.name.rsplit(TEMP_SUFFIX, 1)[-1]
        alive = pid.isdigit() and _process_alive(int(pid))
        with contextlib.suppress(OSError):
            if not alive or now - candidate.stat().st_mtime > older_than_s:
                candidate.unlink()
                removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only or unwritable folder); the previous
    checkpoint at that path, if any, is intact."""


def write_error(path: str | os.PathLike[str], error: OSError) -> CheckpointWriteError:
    """One line: which folder, why, that the previous checkpoint is intact, and what to do."""
    target = Path(path)
    previous = f"the previous {target.name} there is intact" if target.is_file() else "nothing was lost"
    return CheckpointWriteError(
        f"could not write checkpoint {target.name} in {target.parent}: {error.strerror or error}; "
        f"{previous}. Free space or make the folder writable (or set --trainer.default_root_dir), then "
        "resume with --ckpt_path last"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer for local paths: temporary file, ``fsync``, atomic rename.

    A failed write (``ENOSPC``, a read-only folder...) removes its temporary file and raises
    :class:`CheckpointWriteError`; the previous checkpoint stays. Paths with a URL scheme
    (``s3://``...) go through Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local paths")
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as error:
            raise write_error(path, error) from error
