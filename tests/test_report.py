"""``visiontransfer report``: a tiny real label-efficiency run on CIFAR-10 files, its report files,
resuming from ``cells.jsonl`` (also after a write cut short), and one-line errors naming the flag."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontransfer.commands import report
from visiontransfer.commands.lightning_cli import VisionTransferCLI
from visiontransfer.data import ClassificationDataModule

CLASSES = ("airplane", "automobile", "cat", "dog")
FRACTIONS = ("0.25", "1.0")
SEEDS = ("0", "1")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread each is faster than two threads contending with anything else."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pretext_ckpt(tmp_path_factory: pytest.TempPathFactory, rotation_checkpoint) -> Path:
    """A RotNet checkpoint of a tiny timm ResNet (small-image stem), one training step."""
    folder = tmp_path_factory.mktemp("pretext")
    return rotation_checkpoint(folder / "rotation.ckpt", backbone="test_resnet", small_input_stem=True)[0]


@pytest.fixture(scope="module")
def labeled_root(
    tmp_path_factory: pytest.TempPathFactory,
    cifar10_dir: Path,
    link_files: Callable[[Iterable[Path], Path], list[Path]],
) -> Path:
    """4 CIFAR-10 classes: 20 training and 5 test images each, as root/{train,test}/<class>/."""
    root = tmp_path_factory.mktemp("cifar")
    for split, count in (("train", 20), ("test", 5)):
        for name in CLASSES:
            link_files(sorted((cifar10_dir / split / name).glob("*.jpg"))[:count], root / split / name)
    return root


def _args(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(root), "--backbones", str(ckpt), "--fractions", *FRACTIONS, "--seeds", *SEEDS,
        "--image-size", "32", "--batch-size", "32", "--base-epochs", "1", "--workers", "0",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, labeled_root: Path, pretext_ckpt: Path) -> Path:
    """The output folder of one real run: 2 backbones × 2 recipes × 2 fractions × 2 seeds."""
    out = tmp_path_factory.mktemp("report") / "out"
    report.main(_args(labeled_root, pretext_ckpt, out))
    return out


@pytest.fixture
def copy_of(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run's folder, for tests that change it."""
    return Path(shutil.copytree(finished, tmp_path / "out"))


def _table(markdown: str) -> dict[tuple[str, str], list[str]]:
    """Rows of the report's table: (backbone, recipe) → cells."""
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {(r[0].strip(), r[1].strip()): [c.strip() for c in r[2:]] for r in rows[2:]}


def _no_training(*args: object, **kwargs: object) -> report.Cell:
    raise AssertionError("run_cell called: a finished cell was computed again")


def test_report_files_match_the_cells(finished: Path) -> None:
    cells = report.load_cells(finished / report.CELLS)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({json.dumps(c.key, sort_keys=True) for c in cells}) == len(cells)
    assert len((finished / report.CELLS).read_text().splitlines()) == len(cells)
    text = (finished / report.REPORT_MD).read_text()
    table = _table(text)
    assert set(table) == {
        (b, r) for b in ("RotationPrediction", "scratch") for r in ("linear_probe", "finetune")
    }
    header = next(line for line in text.splitlines() if line.startswith("| backbone"))
    # 4 classes × 18 training images after the 10% hold-out: 25% → 5 per class, 100% → 18.
    assert "25% (20 labels)" in header and "100% (72 labels)" in header
    for (backbone, recipe), values in table.items():
        for fraction, value in zip((0.25, 1.0), values, strict=True):
            top1 = [
                c.score for c in cells if (c.backbone, c.recipe, c.fraction) == (backbone, recipe, fraction)
            ]
            mean, std = (float(v) for v in value.split("±"))
            assert len(top1) == 2 and all(0.0 <= t <= 1.0 for t in top1)
            assert mean == pytest.approx(sum(top1) / 2, abs=5e-4)
            assert std == pytest.approx(abs(top1[0] - top1[1]) / 2**0.5, abs=5e-4)
    for cell in cells:  # each classifier cell keeps its test confusion matrix (truth x prediction)
        matrix = torch.tensor(cell.confusion)
        assert cell.classes is not None and matrix.shape == (len(cell.classes), len(cell.classes))
        assert matrix.trace() / matrix.sum() == pytest.approx(cell.score, abs=1e-6)
    assert "labeled training images: 25%: 20, 100%: 72" in text and "test_resnet" in text
    with Image.open(finished / report.REPORT_PNG) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_rerun_recomputes_nothing(copy_of: Path, labeled_root: Path, pretext_ckpt: Path, monkeypatch) -> None:
    lines = (copy_of / report.CELLS).read_text()
    expected = (copy_of / report.REPORT_MD).read_text()
    (copy_of / report.REPORT_MD).unlink()
    (copy_of / report.REPORT_PNG).unlink()
    monkeypatch.setattr(report, "run_cell", _no_training)
    report.main(_args(labeled_root, pretext_ckpt, copy_of))
    assert (copy_of / report.REPORT_MD).read_text() == expected
    assert (copy_of / report.REPORT_PNG).is_file()
    assert (copy_of / report.CELLS).read_text() == lines


def test_truncated_last_line_is_ignored_and_cut_before_appending(
    copy_of: Path, labeled_root: Path, pretext_ckpt: Path, monkeypatch
) -> None:
    cells_file = copy_of / report.CELLS
    complete = cells_file.read_text().splitlines()
    with cells_file.open("a") as handle:
        handle.write(complete[0][: len(complete[0]) // 2])  # a write cut short by a kill
    monkeypatch.setattr(report, "run_cell", _no_training)
    report.main(_args(labeled_root, pretext_ckpt, copy_of))  # nothing to compute, no error
    assert len(report.load_cells(cells_file)) == 16
    calls: list[tuple[str, str, float, int]] = []

    def fake(backbone: report.Backbone, recipe: str, fraction: float, seed: int, settings: report.Settings):
        calls.append((backbone.name, recipe, fraction, seed))
        key = report.cell_key(backbone, recipe, fraction, seed, settings)
        return report.Cell(backbone.name, recipe, fraction, seed, 72, 0.5, 2, 0.0, key)

    monkeypatch.setattr(report, "run_cell", fake)
    args = _args(labeled_root, pretext_ckpt, copy_of, "--recipes", "finetune")
    report.main([*args[: args.index("--seeds") + 1], "0", "1", "2", *args[args.index("--image-size") :]])
    assert sorted(calls) == sorted(
        (b, "finetune", f, 2) for b in ("RotationPrediction", "scratch") for f in (0.25, 1.0)
    )
    lines = cells_file.read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line) for line in lines)  # the partial line was cut


def test_a_cell_is_its_documented_fit_and_test_command(finished: Path, tmp_path: Path) -> None:
    """The command report.md prints for a cell, run as a user would (fit, then test on last.ckpt),
    gives the cell's score: the report runs the same YAML recipe as `visiontransfer fit`."""
    cells = report.load_cells(finished / report.CELLS)
    cell = next(c for c in cells if c.recipe == "finetune" and c.seed == 1)
    assert f"`{cell.command}`" in (finished / report.REPORT_MD).read_text()
    words = shlex.split(cell.command)
    assert words[:2] == ["visiontransfer", "fit"]
    args = [*words[2:], "--data.num_workers=0", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger.init_args.save_dir=" + str(tmp_path / "runs")]  # fmt: skip
    VisionTransferCLI(args=["fit", *args])
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    test = VisionTransferCLI(args=["test", *args, f"--ckpt_path={last}"])
    assert float(test.trainer.callback_metrics["test/top1"]) == pytest.approx(cell.score, abs=1e-6)


def test_summarize_and_table() -> None:
    def cell(backbone: str, fraction: float, seed: int, top1: float) -> report.Cell:
        return report.Cell(backbone, "finetune", fraction, seed, int(fraction * 1000), top1, 2, 1.0, {})

    cells = [cell("a", 0.01, 0, 0.2), cell("a", 0.01, 1, 0.4), cell("a", 1.0, 0, 0.9), cell("b", 1.0, 0, 0.5)]
    rows = report.summarize(cells)
    assert [(r.backbone, r.fraction, r.seeds) for r in rows] == [("a", 0.01, 2), ("a", 1.0, 1), ("b", 1.0, 1)]
    assert rows[0].mean == pytest.approx(0.3) and rows[0].std == pytest.approx(0.1414, abs=1e-4)
    assert rows[1].std == 0.0
    table = report.format_table(rows)
    assert "| 1% (10 labels) | 100% (1000 labels) |" in table
    assert "| b | finetune | – | 0.500 ± 0.000 |" in table
    assert report.percent(0.005) == "0.5%"


def test_test_subset_is_stratified(labeled_root: Path) -> None:
    data = ClassificationDataModule(root=str(labeled_root), test_images=8, num_workers=0)
    data.setup("fit")
    test = data.datasets["test"]
    labels = [test[i]["label"] for i in range(len(test))]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_backbone_names(pretext_ckpt: Path) -> None:
    named = report.resolve_backbones([f"rot={pretext_ckpt}", str(pretext_ckpt)])
    assert [b.name for b in named] == ["rot", "RotationPrediction", "scratch"]
    assert [b.pretrained for b in named] == [True, True, False]
    assert named[2].source == "test_resnet" and "--model.small_input_stem=true" in named[2].model_args()
    assert named[0].fingerprint == named[1].fingerprint != named[2].fingerprint


@pytest.mark.parametrize("case", ["missing data", "no test split", "missing backbone", "not a backbone"])
def test_errors_are_one_line_naming_the_flag(
    case: str, labeled_root: Path, pretext_ckpt: Path, tmp_path: Path, capsys
) -> None:
    data, backbone, flag = labeled_root, pretext_ckpt, "--backbones"
    if case == "missing data":
        data, flag = tmp_path / "nowhere", "--data"
    elif case == "no test split":
        (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
        data, flag = tmp_path / "only_train", "--data"
    elif case == "missing backbone":
        backbone = tmp_path / "missing.ckpt"
    else:
        backbone = tmp_path / "notes.ckpt"
        backbone.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        report.main(_args(data, backbone, tmp_path / "out"))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("visiontransfer report: error: ")
    assert re.search(re.escape(flag) + r"\b", message), message
    assert not (tmp_path / "out" / report.CELLS).exists()
