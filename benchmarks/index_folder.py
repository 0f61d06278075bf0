"""Benchmark folder indexing: ``scan_images`` + ``PathTable`` on a tree of many small files.

Builds a tree of ``--files`` entries (default 1,000,000) in ``--per-dir`` files per folder, mostly
``.jpg`` plus upper-case and ``.png`` images, non-image files and hidden files that indexing must
leave out, then measures (median of ``--repeats``):

* wall seconds and files/s of ``scan_images(root)`` + ``PathTable(root, paths)``;
* peak memory of that indexing, two ways: the peak of Python allocations (``tracemalloc``, in a
  separate untimed run, since tracing slows allocation down) and the growth of the peak resident
  set (``ru_maxrss`` in a fresh process, minus its resident set before indexing);
* ``PathTable.nbytes()``;
* a naive baseline in the same run: ``sorted(glob.glob(root + '/**/*', recursive=True))``
  filtered by extension, and the time ratio ours / baseline.

Targets for 1,000,000 files: under 30 s and under 300 MB.

    python benchmarks/index_folder.py --files 1000000 --per-dir 1000 --repeats 3
    python benchmarks/index_folder.py --keep /tmp/tree   # build once, reuse on later runs
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from visiontransfer.data.decode import IMAGE_EXTENSIONS
from visiontransfer.data.index import PathTable, scan_images

TARGET_SECONDS = 30.0
TARGET_MB = 300.0
TARGET_FILES = 1_000_000
DIRS_PER_GROUP = 100
MARKER = ".index_folder_tree.json"
MB = 1024 * 1024

RESULT_KEYS = (
    "entries",
    "files",
    "folders",
    "repeats",
    "seconds",
    "seconds_all",
    "files_per_s",
    "tracemalloc_peak_mb",
    "rss_growth_mb",
    "rss_method",
    "table_nbytes",
    "baseline_seconds",
    "baseline_files",
    "ratio",
)


def entry_name(i: int) -> str:
    """File name of entry ``i``: 1 in 50 is a non-image, 1 in 200 hidden, the rest images."""
    if i % 50 == 49:
        return f"f{i:07d}.txt" if i % 100 == 49 else f"f{i:07d}.json"
    if i % 200 == 48:
        return f".f{i:07d}.jpg"  # hidden: excluded although it ends in .jpg
    if i % 50 == 47:
        return f"f{i:07d}.JPG"  # extensions compare case-insensitively
    if i % 50 == 46:
        return f"f{i:07d}.png"
    return f"f{i:07d}.jpg"


def is_counted(i: int) -> bool:
    """Whether entry ``i`` is an image that indexing must return."""
    return not (i % 50 == 49 or i % 200 == 48)


def expected_files(n_files: int) -> int:
    """Number of entries of a :func:`make_tree` tree that indexing must return."""
    return sum(1 for i in range(n_files) if is_counted(i))


def folder_of(i: int, per_dir: int) -> str:
    """Relative folder of entry ``i``: ``g<group>/d<folder>``, 100 folders per group."""
    d = i // per_dir
    return f"g{d // DIRS_PER_GROUP:04d}/d{d:06d}"


def make_tree(root: str, n_files: int, per_dir: int = 1000) -> int:
    """Write ``n_files`` tiny files under ``root``, ``per_dir`` per folder.

    Files hold one byte (indexing opens none of them). Returns the number of image files that
    indexing must find (non-image and hidden files excluded).
    """
    if n_files < 0 or per_dir < 1:
        raise ValueError(f"need n_files >= 0 and per_dir >= 1, got {n_files}, {per_dir}")
    os.makedirs(root, exist_ok=True)
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    for start in range(0, n_files, per_dir):
        folder = os.path.join(root, folder_of(start, per_dir))
        os.makedirs(folder, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            for i in range(start, min(start + per_dir, n_files)):
                fd = os.open(entry_name(i), flags, 0o644, dir_fd=dir_fd)
                os.write(fd, b"x")
                os.close(fd)
        finally:
            os.close(dir_fd)
    return expected_files(n_files)


def ensure_tree(root: str, n_files: int, per_dir: int) -> tuple[int, bool]:
    """Reuse the tree at ``root`` if a previous run built it with the same sizes, else build it.

    Returns ``(expected files, whether it was built now)``.
    """
    spec = {"files": n_files, "per_dir": per_dir}
    marker = os.path.join(root, MARKER)
    try:
        with open(marker, encoding="utf-8") as handle:
            if json.load(handle) == spec:
                return expected_files(n_files), False
    except (OSError, ValueError):
        pass
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"--keep {root!r} is not empty and was not built by this benchmark")
    expected = make_tree(root, n_files, per_dir)
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    return expected, True


def index(root: str) -> PathTable:
    """The measured operation: walk ``root`` and pack the sorted paths into a table."""
    return PathTable(root, scan_images(root))


def baseline(root: str) -> list[str]:
    """Naive listing: recursive glob, sorted, filtered by extension."""
    paths = sorted(glob.glob(os.path.join(glob.escape(root), "**", "*"), recursive=True))
    return [p for p in paths if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]


def _timed(fn: Any, root: str, repeats: int) -> tuple[list[float], int]:
    times: list[float] = []
    count = 0
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn(root)
        times.append(time.perf_counter() - start)
        count = len(result)
        del result
    return times, count


def tracemalloc_peak(root: str) -> tuple[int, int]:
    """Peak bytes of Python allocations while indexing ``root``, and the table's ``nbytes``."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        table = index(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, table.nbytes()


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak resident set) of this process in bytes; empty off Linux."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return values


def _rss_now() -> int | None:
    try:
        import psutil
    except ImportError:
        return _proc_status().get("VmRSS")
    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return "VmHWM" in _proc_status()


def _maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def rss_probe(root: str) -> dict[str, Any]:
    """In this process: resident set before indexing, its peak while indexing, the files found.

    The peak is ``VmHWM`` after resetting it just before indexing where Linux allows that, else
    ``ru_maxrss`` (a high-water mark of the whole process life, imports included).
    """
    gc.collect()
    reset = _reset_peak_rss()
    before = _rss_now()
    table = index(root)
    peak = _proc_status().get("VmHWM") if reset else None
    method = "VmHWM reset before indexing" if peak is not None else "ru_maxrss"
    if peak is None:
        peak = _maxrss()
    return {"rss_before": before, "rss_peak": peak, "method": method, "files": len(table)}


def rss_growth(root: str) -> tuple[int | None, str]:
    """Peak resident-set growth of indexing ``root`` in a fresh Python process, and how measured.

    A peak resident set is a high-water mark that never falls, so it says something about indexing
    only in a process that did nothing large before. ``(None, reason)`` if the probe failed.
    """
    command = [sys.executable, os.path.abspath(__file__), "--rss-probe", root]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True)
        probe = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as error:
        return None, f"probe failed: {type(error).__name__}"
    if probe.get("rss_before") is None:
        return None, "no RSS reading on this platform"
    return max(0, int(probe["rss_peak"]) - int(probe["rss_before"])), str(probe["method"])


def measure(root: str, repeats: int = 3, rss: bool = True, with_baseline: bool = True) -> dict[str, Any]:
    """Time and size the indexing of ``root`` (and the baseline); see :data:`RESULT_KEYS`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times, files = _timed(index, root, repeats)
    seconds = statistics.median(times)
    peak, nbytes = tracemalloc_peak(root)
    growth, rss_method = rss_growth(root) if rss else (None, "skipped")
    if with_baseline:
        base_times, base_files = _timed(baseline, root, repeats)
        base_seconds: float | None = statistics.median(base_times)
    else:
        base_files, base_seconds = None, None
    entries = folders = 0
    for _, dirs, names in os.walk(root):
        folders += len(dirs)
        entries += len(names)
    return {
        "entries": entries - int(os.path.exists(os.path.join(root, MARKER))),
        "files": files,
        "folders": folders,
        "repeats": repeats,
        "seconds": seconds,
        "seconds_all": times,
        "files_per_s": files / seconds if seconds > 0 else float("inf"),
        "tracemalloc_peak_mb": peak / MB,
        "rss_growth_mb": None if growth is None else growth / MB,
        "rss_method": rss_method,
        "table_nbytes": nbytes,
        "baseline_seconds": base_seconds,
        "baseline_files": base_files,
        "ratio": None if not base_seconds else seconds / base_seconds,
    }


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return ""
    return "met" if value < target else "MISSED"


def report(result: dict[str, Any]) -> str:
    """The figures of :func:`measure` as printable lines, each next to its target."""
    r = result
    scale = "" if r["entries"] >= TARGET_FILES else f" (targets are for {TARGET_FILES:,} files)"
    rss = "n/a" if r["rss_growth_mb"] is None else f"{r['rss_growth_mb']:.1f} MB"
    runs = ", ".join(f"{t:.2f}" for t in r["seconds_all"])
    lines = [
        f"tree: {r['entries']:,} files in {r['folders']:,} folders, {r['files']:,} of them images{scale}",
        f"scan_images + PathTable: {r['seconds']:.3f} s wall (median of {r['repeats']}: {runs})"
        f"   target < {TARGET_SECONDS:.0f} s: {_verdict(r['seconds'], TARGET_SECONDS)}",
        f"throughput:              {r['files_per_s']:,.0f} files/s",
        f"peak Python allocations: {r['tracemalloc_peak_mb']:.1f} MB (tracemalloc peak)"
        f"   target < {TARGET_MB:.0f} MB: {_verdict(r['tracemalloc_peak_mb'], TARGET_MB)}",
        f"peak RSS growth:         {rss} (fresh process, peak minus RSS before; {r['rss_method']})"
        f"   target < {TARGET_MB:.0f} MB: {_verdict(r['rss_growth_mb'], TARGET_MB)}",
        f"PathTable.nbytes:        {r['table_nbytes'] / MB:.1f} MB ({r['table_nbytes']:,} bytes)",
    ]
    if r["baseline_seconds"] is not None:
        lines.append(
            f"baseline sorted(glob('**/*')) + filter: {r['baseline_seconds']:.3f} s wall "
            f"(median, {r['baseline_files']:,} images)"
        )
        lines.append(
            f"ratio ours / baseline:   {r['ratio']:.3f} ({1 / r['ratio']:.1f}x faster)"
            if r["ratio"]
            else "ratio ours / baseline:   n/a"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=TARGET_FILES, help="entries in the tree")
    parser.add_argument("--per-dir", type=int, default=1000, help="files per folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--keep", metavar="DIR", help="build the tree here, keep it, reuse it if built")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS probe")
    parser.add_argument("--no-baseline", action="store_true", help="skip the glob baseline")
    parser.add_argument("--rss-probe", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe)))
        return {}

    tmp = None if args.keep else tempfile.mkdtemp(prefix="index_folder_")
    root = args.keep or os.path.join(tmp, "tree")  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        expected, built = ensure_tree(root, args.files, args.per_dir)
        how = f"built in {time.perf_counter() - start:.1f} s" if built else "reused"
        print(f"tree at {root} ({how})", flush=True)
        result = measure(root, args.repeats, rss=not args.no_rss, with_baseline=not args.no_baseline)
        print(report(result), flush=True)
        if result["files"] != expected:
            raise SystemExit(f"indexing found {result['files']:,} images, expected {expected:,}")
        if result["baseline_files"] not in (None, expected):
            print(f"warning: baseline found {result['baseline_files']:,} images, expected {expected:,}")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
