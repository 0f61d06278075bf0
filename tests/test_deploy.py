"""Whole-model export (``visiontransfer export --format safetensors|onnx|torch-export``): real
fine-tuned checkpoints (a classifier on CIFAR-10 from a RotNet backbone, detectors on the raccoon
set, a segmenter on CamVid), parity of onnxruntime and ``torch.export.load`` with PyTorch on real
images at batches of 1 and 7, hub-ready folders (timm ``local-dir:``, ``torch.hub``, the model card
with the checkpoint's true metrics), the upload against a fake Hub, bad input, and the benchmark."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
import torchvision
from benchmark_scripts import load_benchmark
from lightning.pytorch.callbacks import ModelCheckpoint

import visiontransfer
from visiontransfer.cli import main as cli_main
from visiontransfer.commands.report import Cell, Settings, summarize, write_report
from visiontransfer.data import ClassificationDataModule
from visiontransfer.data.decode import load_rgb
from visiontransfer.data.detection import DetectionDataModule, detection_eval_transform
from visiontransfer.data.transforms import eval_transform
from visiontransfer.deploy.parity import DENSE_TOLERANCE, match_detections
from visiontransfer.errors import ConfigError
from visiontransfer.export import export
from visiontransfer.transfer import ImageClassifier, ObjectDetector, SemanticSegmenter

CLASSES = ("airplane", "cat", "ship")
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def _cifar_batch(cifar10_dir: Path, count: int, start: int = 100) -> torch.Tensor:
    """``(count, 3, 32, 32)`` uint8 CIFAR-10 test images the classifier never saw."""
    files = [
        sorted((cifar10_dir / "test" / c).glob("*.jpg"))[start + i] for i in range(count) for c in CLASSES
    ]
    crop = eval_transform(32)
    return torch.stack(
        [torch.from_numpy(crop(image=load_rgb(f))["image"]).permute(2, 0, 1) for f in files[:count]]
    )


@pytest.fixture(scope="module")
def classifier(
    tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path, link_files, rotation_checkpoint
) -> Any:
    """A RotNet backbone fine-tuned on 36 CIFAR-10 images of 3 classes (one epoch, with validation
    and a test), its ``last.ckpt`` and the metrics measured on it."""
    root = tmp_path_factory.mktemp("classifier")
    for split, count in (("train", 12), ("test", 4)):
        for name in CLASSES:
            link_files(
                sorted((cifar10_dir / split / name).glob("*.jpg"))[:count], root / "data" / split / name
            )
    pretext, _ = rotation_checkpoint(root / "pretext.ckpt", backbone="resnet10t", small_input_stem=False)
    L.seed_everything(0)
    data = ClassificationDataModule(root=str(root / "data"), image_size=32, batch_size=8, num_workers=0)
    model = ImageClassifier(num_classes=3, backbone=str(pretext), class_names=list(CLASSES), input_size=32)
    checkpoints = ModelCheckpoint(
        dirpath=root / "checkpoints", monitor="val/top1", mode="max", save_last=True
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, callbacks=[checkpoints], default_root_dir=root, **QUIET
    )
    trainer.fit(model, data)
    validated = trainer.validate(model, data, verbose=False)[0]
    tested = trainer.test(model, data, verbose=False)[0]
    return {
        "ckpt": Path(checkpoints.last_model_path),
        "model": model.eval(),
        "val": validated,
        "test": tested,
        "root": root,
        "pretext": pretext,
    }


@pytest.fixture(scope="module")
def exports(classifier: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The classifier exported in each format (ONNX through the CLI)."""
    root = tmp_path_factory.mktemp("exports")
    out = {fmt: export(classifier["ckpt"], root / fmt, fmt) for fmt in ("safetensors", "torch-export")}
    cli_main(["export", str(classifier["ckpt"]), "--out", str(root / "onnx"), "--format", "onnx"])
    out["onnx"] = root / "onnx"
    return out


def _logits(classifier: Any, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier["model"](images)


# -- classification: parity per format -------------------------------------------------------------
def test_onnx_runs_in_onnxruntime_at_batch_1_and_7(
    classifier: Any, exports: dict[str, Path], cifar10_dir: Path
) -> None:
    path = exports["onnx"] / "model.onnx"
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_inputs()[0].shape == [
        "batch",
        3,
        "height",
        "width",
    ]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for count in (1, 7):
        images = _cifar_batch(cifar10_dir, count)
        (logits,) = session.run(None, {"images": images.numpy()})
        assert logits.shape == (count, 3)
        assert np.abs(logits - _logits(classifier, images).numpy()).max() <= DENSE_TOLERANCE
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["class_names"]) == list(CLASSES) and metadata["task"] == "classification"
    check = json.loads((exports["onnx"] / "config.json").read_text())["visiontransfer"]["deployment"]["check"]
    assert check["max_abs_diff"] <= DENSE_TOLERANCE and check["batches"] == [1, 8]
    assert "--data.test_root" in check["source"] or "--data.root" in check["source"]  # its own real images


def test_torch_export_program_at_batch_1_and_7(
    classifier: Any, exports: dict[str, Path], cifar10_dir: Path
) -> None:
    """Through load_model (the child process of the next test loads it with torch.export.load alone)."""
    program = visiontransfer.load_model(str(exports["torch-export"]))
    with zipfile.ZipFile(exports["torch-export"] / "model.pt2") as archive:  # torch.export.save's extra_files
        record = next(n for n in archive.namelist() if n.endswith("extra/visiontransfer.json"))
        assert json.loads(archive.read(record))["module"] == "ImageClassifier"
    for count in (1, 7):
        images = _cifar_batch(cifar10_dir, count)
        with torch.no_grad():
            assert (program(images) - _logits(classifier, images)).abs().max() <= DENSE_TOLERANCE


def test_load_model_gives_the_classifier_from_every_format(
    classifier: Any, exports: dict[str, Path], cifar10_dir: Path
) -> None:
    images = _cifar_batch(cifar10_dir, 7)
    expected = _logits(classifier, images)
    sources = [
        exports["safetensors"],
        exports["onnx"],
        classifier["ckpt"],
        exports["onnx"] / "model.onnx",
        (exports["onnx"], "safetensors"),
    ]
    for source in sources:
        path, fmt = source if isinstance(source, tuple) else (source, None)
        model = visiontransfer.load_model(str(path), fmt)
        with torch.no_grad():
            assert (model(images) - expected).abs().max() <= DENSE_TOLERANCE, source
    assert isinstance(
        visiontransfer.load_model(str(exports["onnx"])), visiontransfer.deploy.runtime.OnnxModel
    )
    with pytest.raises(
        ConfigError, match=r"holds no model\.pt2; export the model with --format torch-export"
    ):
        visiontransfer.load_model(str(exports["onnx"]), "torch-export")


def test_timm_local_dir_reproduces_the_backbone_features(
    classifier: Any, exports: dict[str, Path], cifar10_dir: Path
) -> None:
    images = _cifar_batch(cifar10_dir, 4)
    model = classifier["model"]
    with torch.no_grad():
        expected = model.features(images)
        for folder in exports.values():
            backbone = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            assert (backbone(model.normalize(images)) - expected).abs().max() <= 1e-5, folder
    config = json.loads((exports["onnx"] / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 0
    assert config["num_features"] == model.num_features
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3


CHILD = r"""
import sys, json, numpy, torch
sys.modules["visiontransfer"] = None  # importing visiontransfer now fails
import onnxruntime, timm
folders, images = json.loads(sys.argv[1]), torch.load(sys.argv[2], weights_only=True)
mean, std = (torch.tensor(json.loads(sys.argv[3])[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
session = onnxruntime.InferenceSession(folders["onnx"] + "/model.onnx", providers=["CPUExecutionProvider"])
program = torch.export.load(folders["torch-export"] + "/model.pt2").module()
hub = torch.hub.load(folders["safetensors"], "backbone", source="local", trust_repo=True).eval()
with torch.no_grad():
    out = {"onnx": torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), "pt2": program(images),
           "hub": hub((images.float() - mean) / std)}
torch.save(out, sys.argv[4])
"""


def test_exports_run_without_visiontransfer(
    classifier: Any, exports: dict[str, Path], cifar10_dir: Path, tmp_path: Path
) -> None:
    images = _cifar_batch(cifar10_dir, 7)
    torch.save(images, tmp_path / "images.pt")
    model = classifier["model"]
    stats = json.dumps(
        {"mean": model.pixel_mean.flatten().tolist(), "std": model.pixel_std.flatten().tolist()}
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folders = json.dumps({k: str(v) for k, v in exports.items()})
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script), folders, str(tmp_path / "images.pt"), stats, str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    expected = _logits(classifier, images)
    assert (out["onnx"] - expected).abs().max() <= DENSE_TOLERANCE
    assert (out["pt2"] - expected).abs().max() <= DENSE_TOLERANCE
    with torch.no_grad():
        assert (out["hub"] - model.features(images)).abs().max() <= 1e-4


# -- the model card ----------------------------------------------------------------------------------
def test_model_card_lists_the_true_metrics_data_and_pretext(
    classifier: Any, exports: dict[str, Path]
) -> None:
    card = (exports["onnx"] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\npipeline_tag: image-classification\n")
    assert f"| `val/top1` | {classifier['val']['val/top1']:.4f} |" in card  # what trainer.validate measures
    assert f"| `val/loss` | {classifier['val']['val/loss']:.4f} |" in card
    assert f"Best `val/top1` kept by ModelCheckpoint: {classifier['val']['val/top1']:.4f}." in card
    data = torch.load(classifier["ckpt"], weights_only=True)["ClassificationDataModule"]["data"]
    assert (
        f"train {data['images']['train']}, val {data['images']['val']}, test {data['images']['test']} images"
        in card
    )
    assert str(classifier["root"] / "data") in card and "`ClassificationDataModule`" in card
    assert "- method: `ImageClassifier`" in card and '"layer_decay": 1.0' in card
    assert f"started from `{classifier['pretext']}`, pretrained by `RotationPrediction`" in card
    assert '"head_hidden_dim": 8' in card  # the pretext's own hyperparameters
    pretext = torch.load(classifier["pretext"], weights_only=True)["PretrainDataModule"]["data"]
    assert pretext["source"] == "the embedded procedural set"
    train = pretext["images"]["train"]
    assert f"- pretraining data: the embedded procedural set (`PretrainDataModule`: train {train}" in card
    assert "`airplane`, `cat`, `ship`" in card and "## Intended use and limitations" in card
    where = str(exports["onnx"])
    for line in (
        f'visiontransfer.load_backbone("{where}")',
        f'visiontransfer.load_model("{where}")',
        f'timm.create_model("local-dir:{where}", pretrained=True)',
        f'torch.hub.load("{where}", "backbone", source="local", trust_repo=True)',
        f'onnxruntime.InferenceSession("{where}/model.onnx")',
    ):
        assert line in card, line
    assert "`model.onnx` was run in onnxruntime" in card and "batches of 1 and 8" in card
    assert 'program = torch.export.load("' in (exports["torch-export"] / "README.md").read_text()


def test_card_includes_the_label_efficiency_report(classifier: Any, tmp_path: Path) -> None:
    score = classifier["test"]["test/top1"]
    cells = [
        Cell("rotation", "finetune", 1.0, 0, 36, score, 1, 1.0, {}),
        Cell("rotation", "finetune", 1.0, 1, 36, score, 1, 1.0, {}),
    ]
    write_report(summarize(cells), tmp_path / "report", Settings(data=str(classifier["root"] / "data")))
    out = export(classifier["ckpt"], tmp_path / "export", report=tmp_path / "report")
    card = (out / "README.md").read_text()
    assert "## Label efficiency (`visiontransfer report`)" in card
    assert f"| rotation | finetune | {score:.3f} ± 0.000 |" in card and "### Settings" in card
    assert (out / "report.png").is_file() and "![label efficiency](report.png)" in card
    assert "## Commands" not in card
    with pytest.raises(ConfigError, match=r"--report=.* holds no report.md: give the --out folder"):
        export(classifier["ckpt"], tmp_path / "other", report=tmp_path)


# -- options -------------------------------------------------------------------------------------------
def test_softmax_and_torchscript_exporter(classifier: Any, cifar10_dir: Path, tmp_path: Path) -> None:
    out = export(
        classifier["ckpt"],
        tmp_path / "probs",
        "onnx",
        softmax=True,
        onnx_exporter="torchscript",
        images=str(cifar10_dir / "test" / "cat"),
    )
    model = visiontransfer.load_model(str(out))
    images = _cifar_batch(cifar10_dir, 7)
    probabilities = model(images)
    assert model.output_names == ("probabilities",)
    assert torch.allclose(probabilities.sum(1), torch.ones(7), atol=1e-5)
    assert (probabilities - _logits(classifier, images).softmax(1)).abs().max() <= DENSE_TOLERANCE
    deployment = json.loads((out / "config.json").read_text())["visiontransfer"]["deployment"]
    assert deployment["exporter"] == "torchscript" and deployment["softmax"] is True
    assert deployment["check"]["source"] == f"--images={str(cifar10_dir / 'test' / 'cat')!r}"
    assert (
        visiontransfer.load_model(str(out), "safetensors")(images) - probabilities
    ).abs().max() <= DENSE_TOLERANCE


def test_pretext_checkpoint_exports_its_features(classifier: Any, cifar10_dir: Path, tmp_path: Path) -> None:
    out = visiontransfer.export(
        str(classifier["pretext"]),
        str(tmp_path / "features"),
        format="onnx",
        onnx_exporter="torchscript",
        images=str(cifar10_dir / "test" / "ship"),
    )
    images = _cifar_batch(cifar10_dir, 7)
    expected = visiontransfer.load_backbone(str(classifier["pretext"])).eval()
    model = visiontransfer.load_model(str(out))
    with torch.no_grad():
        reference = expected(
            (images.float() - classifier["model"].pixel_mean) / classifier["model"].pixel_std
        )
    assert (model(images) - reference).abs().max() <= DENSE_TOLERANCE
    assert not (out / "task.safetensors").exists()
    assert "pipeline_tag: image-feature-extraction" in (out / "README.md").read_text()
    backbone_only = export(classifier["ckpt"], tmp_path / "backbone", backbone_only=True)
    assert sorted(p.name for p in backbone_only.iterdir()) == [
        "README.md",
        "config.json",
        "hubconf.py",
        "model.safetensors",
    ]


def test_fixed_size_backbone_exports_a_fixed_image_size(tmp_path: Path, cifar10_dir: Path) -> None:
    """A ViT built for 32 px takes no other size: the graph's height and width are fixed, the batch not."""
    model = ImageClassifier(
        num_classes=3,
        backbone="test_vit",
        backbone_kwargs={"img_size": 32, "patch_size": 4, "dynamic_img_size": False},
        small_input_stem=False,
        input_size=32,
    )
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, **QUIET)
    images = _cifar_batch(cifar10_dir, 8)
    samples = [{"image": image, "label": i % 3, "index": i} for i, image in enumerate(images)]
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(samples, batch_size=8))
    trainer.save_checkpoint(tmp_path / "vit.ckpt")
    out = export(
        tmp_path / "vit.ckpt",
        tmp_path / "vit",
        "onnx",
        onnx_exporter="torchscript",
        images=str(cifar10_dir / "test" / "dog"),
    )
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    (logits,) = session.run(None, {"images": images[:7].numpy()})
    assert np.abs(logits - model.eval()(images[:7]).detach().numpy()).max() <= DENSE_TOLERANCE
    program = export(
        tmp_path / "vit.ckpt", tmp_path / "pt2", "torch-export", images=str(cifar10_dir / "test" / "dog")
    )
    signature = json.loads((program / "config.json").read_text())["visiontransfer"]["deployment"]["signature"]
    assert signature["inputs"][0]["shape"] == ["batch", 3, 32, 32]  # torch.export specialised the size


def test_a_task_module_without_an_inference_model_says_so() -> None:
    from visiontransfer.transfer import TransferModule

    with pytest.raises(NotImplementedError, match=r"TransferModule has no inference_model\(\): implement it"):
        TransferModule(num_classes=2, backbone="resnet10t").inference_model()


def test_overwrite_replaces_another_formats_files(classifier: Any, tmp_path: Path) -> None:
    out = export(classifier["ckpt"], tmp_path / "out", "onnx", onnx_exporter="torchscript")
    export(classifier["ckpt"], out, "safetensors", overwrite=True)
    assert not (out / "model.onnx").exists() and (out / "task.safetensors").is_file()
    assert (
        json.loads((out / "config.json").read_text())["visiontransfer"]["deployment"]["format"]
        == "safetensors"
    )


def test_push_to_hub_uploads_the_folder(
    classifier: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: HfApi, **kwargs: Any) -> None:
        calls.append(("create_repo", kwargs))

    def upload_folder(self: HfApi, **kwargs: Any) -> Any:
        folder = Path(kwargs["folder_path"])
        calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())}))
        return type("CommitInfo", (), {"commit_url": "https://huggingface.co/me/cifar/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = export(classifier["ckpt"], tmp_path / "hub", push_to_hub="me/cifar", private=True)
    assert calls[0] == (
        "create_repo",
        {"repo_id": "me/cifar", "repo_type": "model", "private": True, "exist_ok": True},
    )
    upload = calls[1][1]
    assert upload["repo_id"] == "me/cifar" and upload["folder_path"] == str(out)
    assert upload["files"] == [
        "README.md",
        "config.json",
        "hubconf.py",
        "model.safetensors",
        "task.safetensors",
    ]
    card = (out / "README.md").read_text()
    assert (
        'timm.create_model("hf-hub:me/cifar", pretrained=True)' in card
        and 'snapshot_download("me/cifar")' in card
    )

    def offline(self: HfApi, **kwargs: Any) -> None:
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    failed = (
        r"--push-to-hub='me/cifar': the upload failed \(ConnectionError: no route.*is complete: upload it"
    )
    with pytest.raises(ConfigError, match=failed + r" later with `hf upload me/cifar"):
        export(classifier["ckpt"], tmp_path / "offline", push_to_hub="me/cifar")
    assert (tmp_path / "offline" / "README.md").is_file()
    with pytest.raises(ConfigError, match="--push-to-hub='not a repo'"):
        export(classifier["ckpt"], tmp_path / "bad", push_to_hub="not a repo")
    assert not (tmp_path / "bad").exists()


# -- bad input -----------------------------------------------------------------------------------------
def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli_main(["export", *args])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def test_bad_input_is_one_line_naming_the_flag(
    classifier: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(classifier["ckpt"])
    message = _cli_error([ckpt, "--out", str(tmp_path / "x"), "--format", "tflite"], capsys)
    assert "argument --format: invalid choice: 'tflite'" in message
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    message = _cli_error([ckpt, "--out", str(taken)], capsys)
    assert message.startswith("visiontransfer export: error: --out=") and "pass --overwrite" in message
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    message = _cli_error([str(tmp_path / "resnet18.pth"), "--out", str(tmp_path / "a")], capsys)
    assert "CKPT=" in message and "bare state dict of 122 tensors" in message and "--model.weights" in message
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pt")
    message = _cli_error([str(tmp_path / "whole.pt"), "--out", str(tmp_path / "b")], capsys)
    assert "is a pickle of Python objects" in message and "nothing of it was run" in message
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump({"weights": [1, 2, 3]}, handle)
    message = _cli_error([str(tmp_path / "plain.pkl"), "--out", str(tmp_path / "c")], capsys)
    assert (
        message.startswith("visiontransfer export: error: CKPT=")
        and "not a visiontransfer checkpoint" in message
    )
    message = _cli_error([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "d")], capsys)
    assert "does not exist" in message
    message = _cli_error(
        [ckpt, "--out", str(tmp_path / "e"), "--images", str(taken), "--format", "onnx"], capsys
    )
    assert "--images=" in message and "holds no image file" in message
    message = _cli_error([ckpt, "--out", str(tmp_path / "e"), "--images", str(taken)], capsys)
    assert "--images applies to --format onnx or torch-export" in message
    assert not any((tmp_path / name).exists() for name in "abcde")


# -- detection ---------------------------------------------------------------------------------------
def _raccoon_images(raccoon_dir: Path, size: int, count: int) -> list[torch.Tensor]:
    """Real photos resized as the detection datamodule does (longest side ``size``): several shapes."""
    resize = detection_eval_transform(size)
    files = sorted(raccoon_dir.glob("*.jpg"))[150 : 150 + count]  # raccoon-150 and -152 are greyscale
    arrays = [
        resize(image=load_rgb(f), bboxes=np.zeros((0, 4), np.float32), labels=[])["image"] for f in files
    ]
    return [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]


@pytest.fixture(scope="module")
def detectors(raccoon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Faster R-CNN, RetinaNet and FCOS fine-tuned a few steps on the raccoon set, exported to ONNX."""
    root = tmp_path_factory.mktemp("detectors")
    images = [str(p) for p in sorted(raccoon_dir.glob("*.jpg"))[::90]]
    out: dict[str, Any] = {}
    for name, steps in (("fasterrcnn", 3), ("retinanet", 1), ("fcos", 1)):
        L.seed_everything(0)
        data = DetectionDataModule(
            root=str(raccoon_dir.parent),
            train_split="data/train_labels.csv",
            val_split="data/test_labels.csv",
            image_size=128,
            batch_size=2,
            num_workers=0,
        )
        low = {"box_score_thresh": 0.001} if name == "fasterrcnn" else {"score_thresh": 0.001}
        model = ObjectDetector(
            num_classes=1,
            detector=name,
            backbone="resnet10t",
            fpn_channels=32,
            input_size=128,
            min_size=256 if name == "fcos" else 128,
            detector_kwargs=low,
            class_names=["raccoon"],
        )
        trainer = L.Trainer(max_steps=steps, limit_val_batches=0, enable_checkpointing=False, **QUIET)
        trainer.fit(model, data)
        trainer.save_checkpoint(root / f"{name}.ckpt")
        folder = export(root / f"{name}.ckpt", root / name, "onnx", images=images)
        out[name] = {"model": model.eval(), "folder": folder, "ckpt": root / f"{name}.ckpt"}
    return out


@pytest.mark.parametrize("name", ["fasterrcnn", "retinanet", "fcos"])
def test_detectors_export_to_onnx_with_matching_detections(
    detectors: dict[str, Any], raccoon_dir: Path, name: str
) -> None:
    folder = detectors[name]["folder"]
    deployment = json.loads((folder / "config.json").read_text())["visiontransfer"]["deployment"]
    assert deployment["check"]["detections"] > 0 and deployment["opset"] == 18
    assert deployment["exporter"] == "torchscript" and deployment["signature"]["inputs"][0]["shape"] == [
        1,
        3,
        "height",
        "width",
    ]
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    network = detectors[name]["model"].inference_model()
    shapes = set()
    for image in _raccoon_images(raccoon_dir, 128, 3):
        shapes.add(tuple(image.shape))
        got = tuple(torch.from_numpy(o) for o in session.run(None, {"images": image[None].numpy()}))
        with torch.no_grad():
            expected = network(image[None])
            outputs = detectors[name]["model"]([image])[0]  # the Lightning module's own forward
        assert torch.equal(expected[2], outputs["labels"]) and torch.allclose(expected[0], outputs["boxes"])
        matched, missing, box, score = match_detections(expected, got)
        assert not missing and box <= 0.05 and score <= 1e-3
        assert matched > 0 and set(got[2].tolist()) <= {1}
        if name != "retinanet":  # a one-step RetinaNet scores everything alike: its cut-off is float noise
            assert matched == len(expected[1]) == len(got[1])
    assert len(shapes) > 1  # dynamic height and width


def test_detectors_refuse_torch_export_and_softmax(
    detectors: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(detectors["fasterrcnn"]["ckpt"])
    message = _cli_error([ckpt, "--out", str(tmp_path / "pt2"), "--format", "torch-export"], capsys)
    assert (
        "--format=torch-export does not support ObjectDetector" in message and "use --format onnx" in message
    )
    message = _cli_error([ckpt, "--out", str(tmp_path / "soft"), "--format", "onnx", "--softmax"], capsys)
    assert "--softmax applies to classifiers, not to ObjectDetector" in message
    message = _cli_error(
        [ckpt, "--out", str(tmp_path / "dyn"), "--format", "onnx", "--onnx-exporter", "dynamo"], capsys
    )
    assert "--onnx-exporter=dynamo does not apply to DetectionNetwork" in message
    assert not any((tmp_path / n).exists() for n in ("pt2", "soft", "dyn"))
    card = (detectors["fasterrcnn"]["folder"] / "README.md").read_text()
    assert (
        "pipeline_tag: object-detection" in card and "(labels 1..C, 0 is the background) | `raccoon`" in card
    )


# -- segmentation ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from visiontransfer.data.segmentation import SegmentationDataModule

    camvid = shared_data / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"CamVid not found at {camvid}")
    root = tmp_path_factory.mktemp("segmenter")
    L.seed_everything(0)
    data = SegmentationDataModule(
        root=str(camvid), image_size=64, batch_size=4, num_workers=0, num_images=8, test_images=4
    )
    model = SemanticSegmenter(num_classes=11, backbone="resnet10t", input_size=64, decoder_width=16)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False, **QUIET)
    trainer.fit(model, data)
    trainer.save_checkpoint(root / "segmenter.ckpt")
    return {"model": model.eval(), "ckpt": root / "segmenter.ckpt", "root": root, "camvid": camvid}


def test_segmenter_exports_to_onnx_and_torch_export(segmenter: Any) -> None:
    files = sorted((segmenter["camvid"] / "images" / "test").glob("*.jpg"))
    crop = eval_transform(64)
    images = torch.stack(
        [torch.from_numpy(crop(image=load_rgb(f))["image"]).permute(2, 0, 1) for f in files[:7]]
    )
    onnx_folder = export(segmenter["ckpt"], segmenter["root"] / "onnx", "onnx", onnx_exporter="torchscript")
    program_folder = export(segmenter["ckpt"], segmenter["root"] / "pt2", "torch-export")
    with torch.no_grad():
        expected = segmenter["model"](images)
    session = onnxruntime.InferenceSession(
        str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    program = torch.export.load(str(program_folder / "model.pt2")).module()
    for count in (1, 7):
        (logits,) = session.run(None, {"images": images[:count].numpy()})
        assert logits.shape == (count, 11, 64, 64)
        assert np.abs(logits - expected[:count].numpy()).max() <= DENSE_TOLERANCE
        with torch.no_grad():
            assert (program(images[:count]) - expected[:count]).abs().max() <= DENSE_TOLERANCE
    deployment = json.loads((program_folder / "config.json").read_text())["visiontransfer"]["deployment"]
    assert deployment["task"] == "segmentation" and deployment["module"] == "SemanticSegmenter"
    assert deployment["signature"]["outputs"] == [
        {"name": "logits", "dtype": "float32", "shape": ["batch", 11, "height", "width"]}
    ]
    assert "camvid" in deployment["check"]["source"]
    assert "pipeline_tag: image-segmentation" in (program_folder / "README.md").read_text()
    with torch.no_grad():
        assert (
            visiontransfer.load_model(str(onnx_folder), "safetensors")(images) - expected
        ).abs().max() <= DENSE_TOLERANCE


# -- the benchmark ----------------------------------------------------------------------------------------
def test_inference_benchmark_prints_both_runtimes(
    cifar10_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("inference.py")
    module.main(
        [
            "--backbone",
            "resnet10t",
            "--image-size",
            "32",
            "--batch-sizes",
            "1",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--exporter",
            "torchscript",
            "--data",
            str(cifar10_dir / "test" / "dog"),
        ]
    )
    out = capsys.readouterr().out
    assert "| batch | PyTorch images/s (a) | onnxruntime images/s (b) | ratio b/a |" in out
    assert "\n| 1 | " in out and "\n| 4 | " in out
