"""``--model.weights PATH``: continued pretraining (and fine-tuning) from a timm/PyTorch state dict
on disk, written here by timm itself; loaded after the backbone is built, with the clear report of
keys that don't fit, and checkpoints that rebuild the module without the file."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import save_file

from visiontransfer.errors import ConfigError, MissingPathError
from visiontransfer.pretext import DINO, SimCLR
from visiontransfer.transfer import ImageClassifier

TINY = {"backbone": "resnet10t", "small_input_stem": False, "projection_hidden_dim": 8}


def _timm_weights(name: str = "resnet10t", **kwargs: object) -> dict[str, torch.Tensor]:
    """A timm model's full state dict (with its 1000-class classifier), seeded."""
    torch.manual_seed(123)
    model = timm.create_model(name, **kwargs)  # type: ignore[arg-type]
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def safetensors_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _timm_weights()
    path = tmp_path_factory.mktemp("weights") / "resnet10t.safetensors"
    save_file(state, str(path))
    return path, state


def _assert_backbone_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert "fc.weight" in state and "fc.weight" not in own  # the classifier was dropped
    for name, value in own.items():
        assert torch.equal(value, state[name]), name


def test_safetensors_state_dict_loads_into_a_pretext_backbone(safetensors_file: tuple[Path, dict]) -> None:
    path, state = safetensors_file
    model = SimCLR(**TINY, weights=str(path))
    _assert_backbone_holds(model.backbone, state)
    assert model.backbone_spec.source == str(path.resolve())
    assert model.hparams["weights"] is None and model.hparams["backbone"] == "resnet10t"


def test_pth_checkpoint_of_a_training_script_loads(tmp_path: Path) -> None:
    """A ``.pth`` as timm's and DDP training scripts save it: wrapped, keys prefixed ``module.``."""
    state = _timm_weights()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = DINO(backbone="resnet10t", small_input_stem=False, weights=str(path), out_dim=16, hidden_dim=8)
    _assert_backbone_holds(model.backbone, state)
    _assert_backbone_holds(model.teacher.module[0], state)  # the teacher starts from them too


def test_transfer_modules_take_weights_through_the_cli(
    safetensors_file: tuple[Path, dict], monkeypatch
) -> None:
    from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir

    path, state = safetensors_file
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    config = config_dir() / "transfer" / "quickstart_finetune.yaml"
    args = ["--config", str(config), "--trainer.logger=false", "--model.weights", str(path)]
    cli = VisionTransferCLI(args=args, run=False)
    assert isinstance(cli.model, ImageClassifier)
    _assert_backbone_holds(cli.model.backbone, state)


def test_vit_weights_are_resampled_to_the_model_and_rgb_summed_to_one_channel(tmp_path: Path) -> None:
    """timm's own fitting: position embeddings resampled to another grid; the first convolution
    summed for a 1-channel backbone (as ``timm.create_model(pretrained=True, in_chans=1)`` does)."""
    path = tmp_path / "vit.safetensors"
    save_file(_timm_weights("test_vit", img_size=32, patch_size=4), str(path))
    vit = {
        "backbone": "test_vit",
        "small_input_stem": False,
        "backbone_kwargs": {"img_size": 64, "patch_size": 4},
    }
    model = SimCLR(**vit, weights=str(path), projection_hidden_dim=8)
    assert model.backbone.pos_embed.shape[1] == 1 + 16 * 16  # type: ignore[union-attr]
    rgb = _timm_weights()
    path = tmp_path / "rgb.safetensors"
    save_file(rgb, str(path))
    grey = SimCLR(**TINY, in_chans=1, weights=str(path))
    first = grey.backbone.state_dict()["conv1.0.weight"]
    assert first.shape[1] == 1
    torch.testing.assert_close(first, rgb["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_mismatched_weights_name_the_flag_and_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(_timm_weights("resnet18"), str(path))
    with pytest.raises(ConfigError) as error:
        SimCLR(**TINY, weights=str(path))
    message = str(error.value)
    assert message.startswith(f"--model.weights={str(path)!r}: weights in")
    assert "missing keys ['conv1.0.weight'" in message and "unexpected keys ['conv1.weight'" in message


def test_bad_files_and_two_sources_of_weights(tmp_path: Path, safetensors_file: tuple[Path, dict]) -> None:
    path, _ = safetensors_file
    with pytest.raises(MissingPathError, match=r"--model.weights='nowhere.pth' does not exist"):
        SimCLR(**TINY, weights="nowhere.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match="truncated, or not a weights file"):
        SimCLR(**TINY, weights=str(tmp_path / "cut.pth"))
    torch.save({"conv1.weight": torch.zeros(1), "saved_from": Path("/somewhere")}, tmp_path / "pickled.pth")
    with pytest.raises(ConfigError, match="pickled objects"):
        SimCLR(**TINY, weights=str(tmp_path / "pickled.pth"))
    with pytest.raises(ConfigError, match="choose one source of weights"):
        SimCLR(**TINY, weights=str(path), pretrained=True)
    ckpt = tmp_path / "model.ckpt"
    model = SimCLR(**TINY)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)  # fmt: skip
    with pytest.raises(ConfigError, match="the backbone file brings its own weights"):
        SimCLR(**{**TINY, "backbone": str(ckpt)}, weights=str(path))


def test_checkpoint_rebuilds_the_module_without_the_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet10t.safetensors"
    state = _timm_weights()
    save_file(state, str(path))
    model = SimCLR(**TINY, weights=str(path))
    ckpt = tmp_path / "simclr.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)  # fmt: skip
    path.unlink()
    restored = SimCLR.load_from_checkpoint(ckpt)
    _assert_backbone_holds(restored.backbone, state)
