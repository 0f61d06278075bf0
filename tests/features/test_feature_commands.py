"""The feature commands end to end on real files (embed → neighbors → clusters → duplicates →
classify), and their bad input: one line naming the flag or file, exit status 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from visiontransfer.cli import main


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``visiontransfer`` in-process; return its one-line error (exit status 2)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def bank(image_tree: Path, rotation_ckpt: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``visiontransfer embed`` of the training tree."""
    out = tmp_path_factory.mktemp("commands") / "train"
    args = [
        "embed",
        "--backbone",
        str(rotation_ckpt[0]),
        "--root",
        str(image_tree / "train"),
        "--out",
        str(out),
    ]
    main(
        [
            *args,
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--chunk-size",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    return out


def test_embed_then_neighbors_clusters_duplicates(bank: Path, image_tree: Path, capsys: Any) -> None:
    assert json.loads((bank / "meta.json").read_text())["rows"] == 20
    main(["neighbors", str(bank), "--query", str(image_tree / "test"), "-k", "3"])
    with open(bank / "neighbors.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (
        len(rows) == 10 * 3 and rows[0]["rank"] == "1" and {r["query_label"] for r in rows} == {"cat", "dog"}
    )
    assert float(rows[0]["similarity"]) >= float(rows[1]["similarity"])
    one = next((image_tree / "train" / "dog").glob("*.jpg"))
    main(["neighbors", str(bank), "--query", str(one), "-k", "2", "--out", str(bank / "one")])
    with open(bank / "one" / "neighbors.csv", newline="") as handle:
        alone = list(csv.DictReader(handle))
    assert [r["query"] for r in alone] == [str(one)] * 2 and str(one) not in {r["neighbor"] for r in alone}
    main(["clusters", str(bank), "-k", "2"])
    summary = json.loads((bank / "clusters.json").read_text())
    assert summary["k"] == 2 and sum(summary["sizes"]) == 20 and 0.5 <= summary["purity"] <= 1
    assert "purity" in capsys.readouterr().out
    main(["duplicates", str(bank), "--threshold", "0.999999"])
    assert (bank / "duplicates.csv").read_text().splitlines() == ["kind,similarity,path_a,path_b,row_a,row_b"]
    for picture in ("neighbors.png", "clusters.png", "duplicates.png", "one/neighbors.png"):
        assert (bank / picture).stat().st_size > 1000, picture


def test_classify_command(bank: Path, capsys: Any) -> None:
    main(["classify", str(bank), str(bank), "-k", "3", "--probe-epochs", "10", "--out", str(bank / "self")])
    printed = capsys.readouterr().out
    assert "knn_top1: " in printed and "probe_top1: " in printed
    assert len((bank / "self" / "predictions.csv").read_text().splitlines()) == 21


def test_bad_input_gets_one_line(bank: Path, image_tree: Path, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "o")]
    line = error_line(["embed", "--backbone", "test_resnet", "--root", str(tmp_path / "empty"), *out], capsys)
    assert line.startswith("visiontransfer embed: error: no image files found in --root=") and "empty" in line
    (tmp_path / "weights.ckpt").write_bytes(b"\x00 not a checkpoint")
    not_one = ["--backbone", str(tmp_path / "weights.ckpt"), "--root", str(image_tree / "test"), *out]
    line = error_line(["embed", *not_one], capsys)
    assert line.startswith("visiontransfer embed: error: --backbone=") and "weights.ckpt" in line
    line = error_line(["embed", "--backbone", "resnet1", *out], capsys)
    assert "--backbone='resnet1' is not a timm model; did you mean" in line
    line = error_line(["neighbors", str(bank), "--query", str(image_tree / "test"), "-k", "21"], capsys)
    expected = f"-k=21 is larger than the 20 images of {str(bank)!r}: give at most 20"
    assert line == f"visiontransfer neighbors: error: {expected}"
    line = error_line(["clusters", str(bank), "-k", "50"], capsys)
    assert "-k=50 is larger than the 20 images" in line
    line = error_line(["neighbors", str(bank), "--query", str(tmp_path / "nothing.jpg")], capsys)
    assert "--query=" in line and "does not exist" in line
    line = error_line(["duplicates", str(tmp_path)], capsys)
    assert "EMBEDDINGS=" in line and "no finished embeddings" in line
