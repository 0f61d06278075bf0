"""The folder-indexing benchmark (``benchmarks/index_folder.py``) on a small tree: exact counts and a
complete, sane report. No timing is asserted: the figures depend on the machine."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from visiontransfer.data.decode import IMAGE_EXTENSIONS
from visiontransfer.data.index import scan_images

N_FILES = 2000
PER_DIR = 100


bench = load_benchmark("index_folder.py")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    root = str(tmp_path_factory.mktemp("index_bench") / "tree")
    return root, bench.make_tree(root, N_FILES, PER_DIR)


def _all_files(root: str) -> list[str]:
    return [
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    ]


def test_make_tree_writes_every_entry_in_folders_of_per_dir(tree: tuple[str, int]) -> None:
    root, _ = tree
    files = _all_files(root)
    assert len(files) == N_FILES
    folders = {os.path.dirname(f) for f in files}
    assert len(folders) == N_FILES // PER_DIR
    assert all(len(Path(f).parts) == 3 for f in files)  # g<group>/d<folder>/<file>
    suffixes = {os.path.splitext(f)[1] for f in files}
    assert {".jpg", ".JPG", ".png", ".txt", ".json"} <= suffixes
    assert any(os.path.basename(f).startswith(".") for f in files)  # hidden files are in the tree


def test_indexing_count_is_exact_and_excludes_non_images(tree: tuple[str, int]) -> None:
    root, expected = tree
    by_hand = [
        f
        for f in _all_files(root)
        if not os.path.basename(f).startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
    ]
    assert expected == len(by_hand) == bench.expected_files(N_FILES)
    assert 0 < expected < N_FILES
    found = scan_images(root)
    assert len(found) == expected
    assert found == sorted(p.replace(os.sep, "/") for p in by_hand)
    assert not any(p.endswith((".txt", ".json")) for p in found)
    assert not any(os.path.basename(p).startswith(".") for p in found)
    assert any(p.endswith(".JPG") for p in found)
    table = bench.index(root)
    assert len(table) == expected
    assert table[0] == os.path.join(root, found[0])
    assert len(bench.baseline(root)) == expected


def test_make_tree_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_dir"):
        bench.make_tree(str(tmp_path / "t"), 10, 0)


def test_measure_returns_every_figure(tree: tuple[str, int]) -> None:
    root, expected = tree
    result = bench.measure(root, repeats=2, rss=False)
    assert set(result) == set(bench.RESULT_KEYS)
    assert result["entries"] == N_FILES
    assert result["files"] == result["baseline_files"] == expected
    assert result["folders"] == N_FILES // PER_DIR + math.ceil(N_FILES / PER_DIR / bench.DIRS_PER_GROUP)
    assert result["repeats"] == 2 and len(result["seconds_all"]) == 2
    assert result["seconds"] > 0 and all(t > 0 for t in result["seconds_all"])
    assert result["files_per_s"] == pytest.approx(expected / result["seconds"])
    assert 0 < result["tracemalloc_peak_mb"] < 1000
    assert result["rss_growth_mb"] is None and result["rss_method"] == "skipped"
    # offsets (8 bytes per path, plus one) and at least one byte per path character
    assert result["table_nbytes"] >= 8 * (expected + 1) + expected * len("g0000/d000000/f0000000.jpg")
    assert result["baseline_seconds"] > 0
    assert result["ratio"] == pytest.approx(result["seconds"] / result["baseline_seconds"])
    with pytest.raises(ValueError, match="repeats"):
        bench.measure(root, repeats=0)


def test_rss_probe_in_process_and_in_a_fresh_process(tree: tuple[str, int]) -> None:
    root, expected = tree
    probe = bench.rss_probe(root)
    assert probe["files"] == expected
    if probe["rss_before"] is not None:
        assert probe["rss_peak"] > 0 and probe["rss_before"] > 0
    growth, method = bench.rss_growth(root)  # starts a Python process
    assert method in ("VmHWM reset before indexing", "ru_maxrss") or growth is None
    if growth is not None:
        assert 0 <= growth < 1024**3


def test_main_prints_the_figures_and_reuses_a_kept_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = tmp_path / "kept"
    argv = ["--files", "500", "--per-dir", "50", "--repeats", "1", "--no-rss", "--keep", str(keep)]
    result = bench.main(argv)
    out = capsys.readouterr().out
    expected = bench.expected_files(500)
    assert result["files"] == expected
    assert "built in" in out
    for text in (
        f"{expected:,} of them images",
        "files/s",
        "s wall (median of 1",
        "target < 30 s",
        "tracemalloc peak",
        "target < 300 MB",
        "peak RSS growth",
        "PathTable.nbytes",
        "baseline sorted(glob",
        "ratio ours / baseline",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    assert keep.is_dir()  # --keep leaves the tree in place ...
    bench.main(argv)
    assert "(reused)" in capsys.readouterr().out  # ... and the next run reuses it
    with pytest.raises(FileExistsError):  # a different tree is never written into a kept folder
        bench.main(["--files", "100", "--per-dir", "50", "--repeats", "1", "--no-rss", "--keep", str(keep)])


def test_main_in_a_temporary_folder_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    result = bench.main(["--files", "200", "--per-dir", "40", "--repeats", "1", "--no-rss", "--no-baseline"])
    out = capsys.readouterr().out
    root = out.split("tree at ", 1)[1].split(" (", 1)[0]
    assert result["files"] == bench.expected_files(200)
    assert result["baseline_seconds"] is None and "baseline" not in out
    assert not os.path.exists(root)
