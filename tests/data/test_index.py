"""Indexing without decoding: scan_images, scan_class_folders, PathTable and read_manifest."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from visiontransfer.data.index import PathTable, read_manifest, scan_class_folders, scan_images


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a walk caught in a symbolic link loop)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


# -- scan_images ---------------------------------------------------------------------------------
def test_scan_images_walks_recursively_sorted_and_case_insensitive(tmp_path: Path):
    touch(
        tmp_path,
        "b.JPG",
        "a.Png",
        "c.jpeg",
        "sub/d.webp",
        "sub/deeper/e.TIFF",
        "sub/deeper/f.tif",
        "g.bmp",
        "h.GIF",
        "z/0.jpg",
    )
    assert scan_images(tmp_path) == [
        "a.Png",
        "b.JPG",
        "c.jpeg",
        "g.bmp",
        "h.GIF",
        "sub/d.webp",
        "sub/deeper/e.TIFF",
        "sub/deeper/f.tif",
        "z/0.jpg",
    ]


def test_scan_images_skips_hidden_and_non_images(tmp_path: Path):
    touch(
        tmp_path,
        "keep.jpg",
        ".hidden.jpg",
        "._keep.jpg",  # macOS resource fork
        ".cache/inside.jpg",
        "__MACOSX/keep.jpg",
        "sub/.git/objects.png",
        "notes.txt",
        "labels.csv",
        "photo.jpg.bak",
        "noextension",
        "sub/ok.png",
    )
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image name is walked, not listed
    touch(tmp_path, "folder.jpg/inner.png")
    assert scan_images(tmp_path) == ["folder.jpg/inner.png", "keep.jpg", "sub/ok.png"]


def test_scan_images_custom_extensions(tmp_path: Path):
    touch(tmp_path, "a.jpg", "b.PNG", "c.raw")
    assert scan_images(tmp_path, extensions=frozenset({".png", ".raw"})) == ["b.PNG", "c.raw"]


def test_scan_images_survives_a_symlink_loop_and_lists_each_file_once(tmp_path: Path):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # sub/loop -> root
    os.symlink(tmp_path / "sub", tmp_path / "sub" / "self")  # sub/self -> sub
    with deadline(10):
        found = scan_images(tmp_path)
    assert found == ["a.jpg", "sub/b.jpg"]


def test_scan_images_does_not_list_a_linked_sibling_twice(tmp_path: Path):
    # A "latest -> v2" link must not put v2's images in the set twice (or in train and val).
    touch(tmp_path, "v1/a.jpg", "v2/b.jpg", "v2/c.jpg")
    os.symlink(tmp_path / "v2", tmp_path / "latest")
    assert scan_images(tmp_path) == ["v1/a.jpg", "v2/b.jpg", "v2/c.jpg"]


def test_scan_images_follows_links_out_of_the_tree(tmp_path: Path):
    outside, root = tmp_path / "outside", tmp_path / "root"
    touch(outside, "x.jpg")
    touch(root, "own.png")
    os.symlink(outside, root / "linked")
    os.symlink(outside / "x.jpg", root / "file_link.jpg")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    skipped: list[tuple[str, str]] = []
    # outside/x.jpg is reached twice (file_link.jpg, linked/x.jpg): it is listed once.
    assert scan_images(root, skipped=skipped) == ["file_link.jpg", "own.png"]
    reasons = {Path(p).name: reason for p, reason in skipped}
    assert "dangling symbolic link" in reasons["dangling.jpg"]
    assert "the same file as" in reasons["x.jpg"]
    assert scan_images(root, follow_symlinks=False) == ["own.png"]


def test_scan_images_skips_and_reports_link_loops_and_links_into_the_tree(tmp_path: Path):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    os.symlink("loop", tmp_path / "loop")  # ln -s loop loop
    os.symlink("self.jpg", tmp_path / "self.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "sub" / "again.jpg")  # a second path to a.jpg
    os.symlink(tmp_path, tmp_path / "sub" / "up")  # a link to an ancestor
    skipped: list[tuple[str, str]] = []
    with deadline(10):
        assert scan_images(tmp_path, skipped=skipped) == ["a.jpg", "sub/b.jpg"]
    reasons = {os.path.relpath(p, tmp_path): reason for p, reason in skipped}
    assert set(reasons) == {"loop", "self.jpg", "sub/again.jpg", "sub/up"}
    assert "Too many levels of symbolic links" in reasons["loop"] and "symbolic link" in reasons["self.jpg"]
    assert "already walked" in reasons["sub/up"] and "the same file" in reasons["sub/again.jpg"]


def test_scan_images_missing_root(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_images(tmp_path / "nope")
    touch(tmp_path, "file.jpg")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan_images(tmp_path / "file.jpg")


def test_scan_images_empty_folder(tmp_path: Path):
    assert scan_images(tmp_path) == []


# -- scan_class_folders --------------------------------------------------------------------------
def test_scan_class_folders(tmp_path: Path):
    touch(tmp_path, "dog/1.jpg", "dog/nested/2.PNG", "cat/3.jpg", ".trash/4.jpg", "bird/readme.txt")
    touch(tmp_path, "loose.jpg")  # not in a class folder: ignored
    paths, labels, classes = scan_class_folders(tmp_path)
    assert classes == ["bird", "cat", "dog"]  # sorted; an empty class folder is still a class
    assert paths == ["cat/3.jpg", "dog/1.jpg", "dog/nested/2.PNG"]
    assert labels.dtype == np.int64
    assert labels.tolist() == [1, 2, 2]


def test_scan_class_folders_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_class_folders(tmp_path / "nope")
    touch(tmp_path, "loose.jpg")
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))}.*no class sub-folders"):
        scan_class_folders(tmp_path)
    touch(tmp_path, "a/notes.txt")
    with pytest.raises(
        FileNotFoundError, match=rf"no image files in the class folders of .*{re.escape(str(tmp_path))}"
    ):
        scan_class_folders(tmp_path)


# -- PathTable -----------------------------------------------------------------------------------
UNICODE_NAMES = [
    "plain.jpg",
    "with space/and,comma.png",
    "ünïcödé/straße.jpg",
    "日本語/写真.jpeg",
    "emoji/🦝.webp",
    "mixed/Ελληνικά-עברית.bmp",
    "",
]


def test_path_table_round_trips_unicode(tmp_path: Path):
    table = PathTable(tmp_path, UNICODE_NAMES)
    assert len(table) == len(UNICODE_NAMES)
    for i, name in enumerate(UNICODE_NAMES):
        assert table.relative(i) == name
        assert table[i] == os.path.join(str(tmp_path), name)
    assert list(table) == [os.path.join(str(tmp_path), n) for n in UNICODE_NAMES]
    assert table.index(os.path.join(str(tmp_path), "emoji/🦝.webp")) == 4


def test_path_table_round_trips_undecodable_bytes():
    name = os.fsdecode(b"latin1-caf\xe9.jpg")  # not UTF-8: a surrogate escape
    table = PathTable("", [name, "ok.jpg"])
    assert table[0] == name
    assert os.fsencode(table[0]) == b"latin1-caf\xe9.jpg"


def test_path_table_negative_indexing_and_bounds():
    table = PathTable("/data", ["a.jpg", "b.jpg", "c.jpg"])
    assert table[-1] == "/data/c.jpg"
    assert table[-3] == "/data/a.jpg"
    assert table.relative(-1) == "c.jpg"
    assert table.relative(-2) == "b.jpg"
    assert table[np.int64(1)] == "/data/b.jpg"
    for bad in (3, -4, 100):
        with pytest.raises(IndexError, match="out of range"):
            table[bad]
        with pytest.raises(IndexError, match="out of range"):
            table.relative(bad)


def test_path_table_absolute_paths_with_empty_root():
    table = PathTable("", ["/abs/one.jpg", "rel/two.jpg"])
    assert table[0] == "/abs/one.jpg"
    assert table[1] == "rel/two.jpg"


def test_path_table_empty():
    table = PathTable("/data", [])
    assert len(table) == 0
    assert list(table) == []
    with pytest.raises(IndexError):
        table[0]


def test_path_table_memory_is_small():
    paths = [f"class_{i % 100:03d}/image_{i:07d}.jpg" for i in range(20_000)]
    table = PathTable("/data", paths)
    raw = sum(len(p) for p in paths)
    assert table.nbytes() == raw + 8 * (len(paths) + 1)  # the bytes plus one offset per path
    as_python = sum(sys.getsizeof(p) for p in paths) + sys.getsizeof(paths)
    assert table.nbytes() < as_python / 2
    assert table[12_345] == "/data/class_045/image_0012345.jpg"


# -- read_manifest -------------------------------------------------------------------------------
def test_read_text_manifest(tmp_path: Path):
    manifest = tmp_path / "lists" / "files.txt"
    manifest.parent.mkdir()
    manifest.write_text(
        "# images of the run\na.jpg\n\n   \n  sub/b.png  \n# another comment\n../up.jpg\n/absolute/c.jpg\n",
        encoding="utf-8",
    )
    paths, labels = read_manifest(manifest)
    base = manifest.parent
    assert paths == [str(base / "a.jpg"), str(base / "sub/b.png"), str(base / "../up.jpg"), "/absolute/c.jpg"]
    assert labels is None


def test_read_csv_manifest_with_labels(tmp_path: Path):
    manifest = tmp_path / "train.csv"
    manifest.write_text('path,label\nimg/a.jpg,cat\n"img/with,comma.jpg",dog\n/abs/b.jpg, cat \n')
    paths, labels = read_manifest(manifest)
    assert paths == [str(tmp_path / "img/a.jpg"), str(tmp_path / "img/with,comma.jpg"), "/abs/b.jpg"]
    assert labels == ["cat", "dog", "cat"]


def test_read_csv_manifest_column_order_extra_columns_and_no_label(tmp_path: Path):
    manifest = tmp_path / "m.CSV"
    manifest.write_text("label,width,path\n3,32,x.jpg\n1,32,y.jpg\n")
    assert read_manifest(manifest) == ([str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")], ["3", "1"])
    unlabeled = tmp_path / "u.csv"
    unlabeled.write_text("path\nx.jpg\n")
    assert read_manifest(unlabeled) == ([str(tmp_path / "x.jpg")], None)


def test_read_csv_manifest_with_byte_order_mark(tmp_path: Path):
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("path,label\nä.jpg,x\n".encode("utf-8-sig"))  # as spreadsheets save it
    assert read_manifest(manifest) == ([str(tmp_path / "ä.jpg")], ["x"])


def test_csv_manifest_without_path_column(tmp_path: Path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("file,label\na.jpg,cat\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}:1: .*'path' column"):
        read_manifest(manifest)


def test_csv_manifest_with_empty_label_names_the_line(tmp_path: Path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,label\na.jpg,cat\nb.jpg,\nc.jpg,dog\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}:3: empty 'label'"):
        read_manifest(manifest)
    short = tmp_path / "short.csv"
    short.write_text("path,label\na.jpg,cat\nb.jpg,dog\nc.jpg\n")  # missing field
    with pytest.raises(ValueError, match=rf"{re.escape(str(short))}:4: empty 'label'"):
        read_manifest(short)


def test_csv_manifest_with_empty_path_names_the_line(tmp_path: Path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,label\n  ,cat\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}:2: empty 'path'"):
        read_manifest(manifest)


def test_empty_and_missing_manifests(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match="lists no image paths"):
        read_manifest(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,label\n")
    with pytest.raises(ValueError, match="lists no image paths"):
        read_manifest(header_only)
