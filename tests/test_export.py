"""Export and reload backbones: one call, plain timm keys, no visiontransfer needed, no unpickling."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visiontransfer
from visiontransfer.backbones.weights import UnsafeCheckpointError
from visiontransfer.cli import main as cli_main
from visiontransfer.export import export_backbone, load_backbone
from visiontransfer.pretext import RotationPrediction


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, rotation_checkpoint
) -> dict[str, tuple[Path, RotationPrediction]]:
    root = tmp_path_factory.mktemp("export")
    return {
        "plain": rotation_checkpoint(root / "plain" / "model.ckpt", small_input_stem=False),
        "small": rotation_checkpoint(root / "small" / "model.ckpt", small_input_stem=True),
    }


def _reference(model: RotationPrediction, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.backbone(x)


@pytest.mark.parametrize("kind", ["plain", "small"])
def test_export_writes_plain_timm_keys_and_config(trained, kind: str, tmp_path: Path) -> None:
    ckpt, model = trained[kind]
    out = export_backbone(ckpt, tmp_path / "export")
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(model.backbone.state_dict())
    assert not any(k.startswith("backbone.") for k in weights)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_features"] == model.num_features
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["visiontransfer"]["small_input_stem"] is (kind == "small")
    assert config["visiontransfer"]["method"] == "RotationPrediction"
    assert config["visiontransfer"]["hyperparameters"]["head_hidden_dim"] == 8
    assert config["visiontransfer"]["version"] == visiontransfer.__version__
    assert (out / "hubconf.py").is_file()


@pytest.mark.parametrize("kind", ["plain", "small"])
def test_load_backbone_from_every_source(trained, kind: str, tmp_path: Path) -> None:
    ckpt, model = trained[kind]
    out = export_backbone(ckpt, tmp_path / "export")
    x = torch.randn(2, 3, 32, 32)
    expected = _reference(model, x)
    for source in (ckpt, out, out / "model.safetensors"):
        loaded = visiontransfer.load_backbone(str(source)).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, atol=1e-6), source
    features = load_backbone(out, features_only=True).eval()
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == features.channels
    classifier = load_backbone(out, num_classes=7).eval()
    assert classifier(x).shape == (2, 7)


def test_lone_safetensors_file_describes_itself(trained, tmp_path: Path) -> None:
    ckpt, model = trained["small"]
    out = export_backbone(ckpt, tmp_path / "export")
    lone = tmp_path / "elsewhere.safetensors"
    lone.write_bytes((out / "model.safetensors").read_bytes())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_backbone(lone).eval()(x), _reference(model, x), atol=1e-6)


CHILD = r"""
import sys, json, torch
sys.modules["visiontransfer"] = None  # importing visiontransfer now fails
try:
    import visiontransfer  # noqa
    raise SystemExit("visiontransfer was importable")
except ImportError:
    pass
import timm
out, mode = sys.argv[1], sys.argv[2]
x = torch.load(sys.argv[3], weights_only=True)
if mode == "timm":
    model = timm.create_model("local-dir:" + out, pretrained=True, num_classes=0)
else:
    model = torch.hub.load(out, "backbone", source="local", trust_repo=True)
model.eval()
with torch.no_grad():
    torch.save(model(x), sys.argv[4])
"""


@pytest.mark.parametrize(("kind", "mode"), [("plain", "timm"), ("plain", "hub"), ("small", "hub")])
def test_loads_without_visiontransfer(trained, kind: str, mode: str, tmp_path: Path) -> None:
    ckpt, model = trained[kind]
    out = export_backbone(ckpt, tmp_path / "export")
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script), str(out), mode, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.allclose(got, _reference(model, x), atol=1e-6)


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/visiontransfer-exploit-marker")


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as handle:
        torch.save({"state_dict": {}, "payload": _Exploit()}, handle, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_backbone(evil)
    with pytest.raises(UnsafeCheckpointError):
        export_backbone(evil, tmp_path / "out")
    assert not MARKER.exists(), "the checkpoint's pickle ran code"


def test_mismatched_architecture_names_keys(trained, tmp_path: Path) -> None:
    ckpt, _ = trained["plain"]
    out = export_backbone(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["architecture"] = "resnet18"
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").rename(tmp_path / "w.safetensors")
    # Keep the weights without their embedded config so config.json is read.
    from safetensors.torch import save_file

    save_file(load_file(tmp_path / "w.safetensors"), out / "model.safetensors")
    with pytest.raises(ValueError, match="missing keys") as info:
        load_backbone(out)
    assert "unexpected keys" in str(info.value) and "conv1" in str(info.value)


def test_missing_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_backbone(tmp_path / "nope")


def test_cli_export(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = trained["plain"]
    cli_main(["export", str(ckpt), "--out", str(tmp_path / "cli_out")])
    assert (tmp_path / "cli_out" / "model.safetensors").is_file()
    assert "load_backbone" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli_main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert info.value.code == 2
