"""One stem rule everywhere: an export gives identical features through ``load_backbone``,
``torch.hub`` and (standard stems) timm's ``local-dir:``; files of release 0.1.0 still load.

The exported ``hubconf.py`` carries a verbatim copy of ``visiontransfer/backbones/stem.py``, so a
small-image stem is rebuilt by the same code on both paths. Architectures: every one the backbone
tests cover, plus the three whose stems the old hand-written hubconf got wrong or never met
(DenseNet's ``features.pool0``, BiT's padded pool).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import visiontransfer
from visiontransfer.backbones import BackboneSpec, stem
from visiontransfer.backbones.weights import CHECKPOINT_KEY
from visiontransfer.export import HUBCONF, export_backbone
from visiontransfer.pretext import RotationPrediction
from visiontransfer.transfer import ImageClassifier

VIT_KWARGS = {"img_size": 32, "patch_size": 4}
SPECS = [
    BackboneSpec("resnet10t", small_input_stem=True),
    BackboneSpec("densenet121", small_input_stem=True),
    BackboneSpec("resnetv2_50x1_bit", small_input_stem=True),
    BackboneSpec("resnet18", small_input_stem=True),
    BackboneSpec("test_resnet", small_input_stem=True),
    BackboneSpec("test_convnext", small_input_stem=True),
    BackboneSpec("test_efficientnet", small_input_stem=True),
    BackboneSpec("regnetx_002", small_input_stem=True),
    BackboneSpec("test_nfnet", small_input_stem=True),
    BackboneSpec("test_resnet", in_chans=1, small_input_stem=True),
    BackboneSpec("resnet10t"),
    BackboneSpec("test_convnext"),
    BackboneSpec("test_vit", backbone_kwargs=VIT_KWARGS),
]
FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1_0"


def _export(spec: BackboneSpec, folder: Path) -> tuple[Path, torch.nn.Module]:
    """A checkpoint holding a seeded random backbone of ``spec``, exported; and the backbone."""
    torch.manual_seed(0)
    model = spec.build().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode features differ per layer
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    checkpoint = {
        "state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
        CHECKPOINT_KEY: spec.replace(image_size=32).to_dict(),
    }
    torch.save(checkpoint, folder / "model.ckpt")
    return export_backbone(folder / "model.ckpt", folder / "export"), model


def _name(spec: BackboneSpec) -> str:
    return f"{spec.architecture}-{'small' if spec.small_input_stem else 'std'}-{spec.in_chans}"


@pytest.mark.parametrize("spec", SPECS, ids=[_name(s) for s in SPECS])
def test_load_backbone_torch_hub_and_timm_agree(spec: BackboneSpec, tmp_path: Path) -> None:
    out, reference = _export(spec, tmp_path)
    x = torch.randn(2, spec.in_chans, 32, 32, generator=torch.Generator().manual_seed(1))
    loaded = visiontransfer.load_backbone(str(out)).eval()
    hub = torch.hub.load(str(out), "backbone", source="local", trust_repo=True).eval()
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(hub(x), expected, rtol=0, atol=1e-5)
        if not spec.small_input_stem:  # timm alone cannot change a stem
            plain = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
            torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-5)


def test_the_exported_hubconf_holds_the_stem_code_verbatim(tmp_path: Path) -> None:
    out, _ = _export(BackboneSpec("test_resnet", small_input_stem=True), tmp_path)
    assert Path(stem.__file__).read_text() in (out / HUBCONF).read_text()
    config = json.loads((out / "config.json").read_text())
    block = config["visiontransfer"]
    assert block["small_input_stem"] is True and block["stem_factor"] == 4


def test_release_0_1_0_files_still_load() -> None:
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    images = expected["images"]
    export = FIXTURES / "export"
    for source in (FIXTURES / "rotation.ckpt", export, export / "model.safetensors"):
        model = visiontransfer.load_backbone(str(source)).eval()
        rotation = RotationPrediction.load_from_checkpoint(FIXTURES / "rotation.ckpt").eval()
        with torch.no_grad():
            torch.testing.assert_close(model(rotation.normalize(images)), expected["rotation_features"])
            torch.testing.assert_close(rotation.features(images), expected["rotation_features"])
    # A 0.1.0 transfer checkpoint names the file its backbone came from; give the architecture.
    classifier = ImageClassifier.load_from_checkpoint(
        FIXTURES / "classifier.ckpt", backbone="test_efficientnet", small_input_stem=True
    ).eval()
    assert classifier.num_classes == 10
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), expected["classifier_logits"])
