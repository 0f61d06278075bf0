"""Duplicates planted in a real folder of CIFAR-10 files are found: a byte-identical copy by its
hash, a re-encoded copy as the most similar near pair; byte groups ignore file names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from visiontransfer.features import find_duplicates
from visiontransfer.features.duplicates import byte_duplicates


def test_planted_duplicates_are_found(cifar10_dir: Path, embed_small: Any, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for file in sorted((cifar10_dir / "train" / "cat").glob("*.jpg"))[:14]:
        shutil.copyfile(file, folder / file.name)
    shutil.copyfile(folder / "0003.jpg", folder / "copy_of_0003.jpg")  # the same bytes
    Image.open(folder / "0007.jpg").save(folder / "reencoded_0007.jpg", quality=60)  # other bytes
    embeddings = embed_small("test_resnet", tmp_path / "embeddings", root=str(folder))
    paths = list(embeddings.paths)
    row = {Path(p).name: r for r, p in enumerate(paths)}
    found = find_duplicates(embeddings, threshold=0.99, out=str(tmp_path / "report"))
    assert found.exact == [[row["0003.jpg"], row["copy_of_0003.jpg"]]]
    a, b, similarity = found.near[0]
    assert {a, b} == {row["0007.jpg"], row["reencoded_0007.jpg"]} and similarity >= 0.99
    assert all({x, y} != {row["0003.jpg"], row["copy_of_0003.jpg"]} for x, y, _ in found.near)
    lines = (tmp_path / "report" / "duplicates.csv").read_text().splitlines()
    assert lines[0] == "kind,similarity,path_a,path_b,row_a,row_b"
    assert lines[1].startswith("exact,1.000000,") and "copy_of_0003.jpg" in lines[1]
    assert lines[2].startswith("near,") and "reencoded_0007.jpg" in lines[2]
    assert (tmp_path / "report" / "duplicates.png").stat().st_size > 1000


def test_byte_groups_need_equal_bytes_not_equal_names(tmp_path: Path) -> None:
    for name, data in (("a.jpg", b"same"), ("b/a.jpg", b"other"), ("c.jpg", b"same"), ("d.jpg", b"diff")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n in ("a.jpg", "b/a.jpg", "c.jpg", "d.jpg")] + ["embedded:3"]
    assert byte_duplicates(paths) == [[0, 2]]
