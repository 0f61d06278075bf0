"""Pictures of what pretext models learned (visiontransfer.visualize) and the notebooks' small image
sets (visiontransfer.demo), on synthetic tensors, tiny untrained models and a few CIFAR-10 files."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from visiontransfer import demo, visualize
from visiontransfer.color import rgb_to_lab
from visiontransfer.pretext import Colorization, RotationPrediction


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.axison]


def _images(n: int = 3, size: int = 32, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_to_hwc_and_image_grid() -> None:
    grey = torch.full((1, 4, 5), 0.5)
    assert visualize.to_hwc(grey).shape == (4, 5, 3)
    assert visualize.to_hwc(torch.full((3, 2, 2), 255, dtype=torch.uint8)).max() == 1.0
    assert visualize.to_hwc(torch.full((3, 2, 2), 7.0)).max() == 1.0  # clamped
    fig = visualize.image_grid(_images(5), ncols=2, titles=list("abcde"), colors=["red"] * 5, title="t")
    assert _titles(fig) == list("abcde") and len(fig.axes) == 6  # the sixth slot is blank
    fig.savefig(io.BytesIO(), format="png")
    with pytest.raises(ValueError, match="image_grid"):
        visualize.image_grid(torch.zeros(0, 3, 4, 4), ncols=2)


def test_rotation_figure_orders_images_by_row_and_rotations_by_column(monkeypatch) -> None:
    model = RotationPrediction(backbone="test_resnet", small_input_stem=False, head_hidden_dim=8)
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :4, :4] = 255  # a bright top-left corner: its position gives the rotation away
    references = torch.cat([torch.rot90(images[:1], k=r // 90, dims=(2, 3)) for r in model.rotations])

    def oracle(x: Tensor) -> Tensor:  # a perfect RotNet: which rotation moved the corner there
        match = (x.float().flatten(1) @ references.float().flatten(1).T).argmax(dim=1)
        return nn.functional.one_hot(match, len(model.rotations)).float()

    monkeypatch.setattr(model, "forward", oracle)
    rotated, truth, predicted = visualize.predict_rotations(model, images)
    assert rotated.shape == (8, 3, 32, 32) and torch.equal(truth, predicted)
    fig = visualize.rotation_figure(model, images)
    assert _titles(fig) == [f"pred {r}°" for r in model.rotations] * 2
    assert all(ax.title.get_color() == visualize.RIGHT for ax in fig.axes)
    assert "100%" in fig.get_suptitle()


def test_rotation_figure_of_a_real_model_marks_wrong_predictions() -> None:
    torch.manual_seed(0)
    model = RotationPrediction(backbone="test_resnet", small_input_stem=False, head_hidden_dim=8).train()
    _, truth, predicted = visualize.predict_rotations(model, _images(3))
    assert model.training  # mode restored
    fig = visualize.rotation_figure(model, _images(3), max_images=2)
    colors = [ax.title.get_color() for ax in fig.axes]
    expected = [visualize.RIGHT if t == p else visualize.WRONG for t, p in zip(truth, predicted, strict=True)]
    order = [r * 3 + i for i in range(2) for r in range(4)]
    assert len(fig.axes) == 8 and colors == [expected[j] for j in order]


def test_colorize_gives_grey_predicted_and_true_colours(monkeypatch) -> None:
    model = Colorization(backbone="test_resnet", small_input_stem=False, decoder_width=8, output_stride=1)
    images = _images(2)
    grey, predicted, true = visualize.colorize(model, images)
    assert grey.shape == predicted.shape == true.shape == (2, 3, 32, 32)
    assert torch.equal(true, images.float() / 255.0)
    assert (grey.amax(dim=1) - grey.amin(dim=1)).max() < 1e-2  # R = G = B
    assert float(predicted.min()) >= 0.0 and float(predicted.max()) <= 1.0
    true_ab = rgb_to_lab(images.float() / 255.0)[:, 1:]
    monkeypatch.setattr(model, "predict_ab", lambda output: true_ab)  # a perfect model
    _, perfect, _ = visualize.colorize(model, images)
    assert (perfect - true).abs().max() < 2e-3
    fig = visualize.colorization_figure(model, images)
    assert len(fig.axes) == 6 and [fig.axes[i].get_ylabel() for i in (0, 2, 4)] == [
        "input (L)",
        "predicted",
        "true",
    ]


def test_embed_module_and_plain_backbone() -> None:
    torch.manual_seed(0)
    model = RotationPrediction(backbone="test_resnet", small_input_stem=False, head_hidden_dim=8)
    images = _images(5)
    feats = visualize.embed(model, images, batch_size=2)
    with torch.no_grad():
        assert torch.allclose(feats, model.eval().features(images), atol=1e-5)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    expected = plain((images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / 0.2)
    assert torch.allclose(visualize.embed(plain, images, 3, mean, std), expected.detach(), atol=1e-5)
    with pytest.raises(ValueError, match="mean and std"):
        visualize.embed(plain, images)


def test_nearest_neighbours_and_figure() -> None:
    bank = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    queries = bank[[3, 7]] * 2.0  # same directions: cosine similarity 1
    indices = visualize.nearest_neighbours(queries, bank, k=3)
    assert indices.shape == (2, 3) and indices[:, 0].tolist() == [3, 7]
    assert visualize.nearest_neighbours(queries, bank[:2], k=5).shape == (2, 2)
    labels = torch.tensor([0, 1] * 5)
    fig = visualize.neighbours_figure(
        _images(2), _images(10, seed=1), indices, torch.tensor([1, 1]), labels, ["cat", "dog"]
    )
    titles = _titles(fig)
    assert len(titles) == 8 and titles[0] == "query: dog" and titles[1] == "dog"
    row = [labels[j] == 1 for j in indices[0]]
    assert [fig.axes[1 + j].title.get_color() for j in range(3)] == [
        visualize.RIGHT if ok else visualize.WRONG for ok in row
    ]


def test_pca_2d_and_embedding_figure() -> None:
    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(-3, 3, 50)
    direction = torch.randn(6, generator=generator)
    features = t[:, None] * direction + 0.01 * torch.randn(50, 6, generator=generator) + 5.0
    points = visualize.pca_2d(features)
    assert points.shape == (50, 2)
    assert torch.allclose(points.mean(dim=0), torch.zeros(2), atol=1e-4)
    assert abs(torch.corrcoef(torch.stack([points[:, 0], t]))[0, 1]) > 0.999
    assert points[:, 0].var() > 100 * points[:, 1].var()
    assert visualize.pca_2d(torch.randn(5, 1)).shape == (5, 2)
    fig = visualize.embedding_figure(points, (t > 0).long(), ["left", "right"])
    legend = fig.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["left", "right"]


def test_labeled_images_embedded_and_real(tmp_path: Path, cifar_tree: Callable[..., Path]) -> None:
    images, labels, classes = visualize.labeled_images(None, "test", per_class=2, image_size=32)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32) and len(classes) == 10
    assert torch.bincount(labels).tolist() == [2] * 10
    cifar_tree(tmp_path / "train", classes=("cat", "dog", "frog"), per_class=6)
    cifar_tree(tmp_path / "test", classes=("cat", "dog", "frog"), per_class=3, split="test")
    images, labels, classes = visualize.labeled_images(str(tmp_path), "test", per_class=2)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert classes == ["cat", "dog", "frog"]
    with pytest.raises(ValueError, match="no 'nowhere' split"):
        visualize.labeled_images(str(tmp_path), "nowhere")


def test_small_image_set(tmp_path: Path, cifar10_dir: Path, monkeypatch) -> None:
    found = demo.find_cifar10()
    assert found is not None and found.resolve() == cifar10_dir.resolve()
    images = demo.small_image_set(tmp_path / "set", train_per_class=3, test_per_class=2, classes=4)
    assert images.root == str(tmp_path / "set") and images.pretrain_root == str(tmp_path / "set" / "train")
    assert len(list((tmp_path / "set" / "train").rglob("*.jpg"))) == 12
    assert len(list((tmp_path / "set" / "test").rglob("*.jpg"))) == 8
    assert "12 training and 8 test images of 4 classes" in images.description
    again = demo.small_image_set(tmp_path / "set", train_per_class=3, test_per_class=2, classes=4)
    assert again == images
    monkeypatch.setattr(demo, "find_cifar10", lambda: None)
    embedded = demo.small_image_set(tmp_path / "none")
    assert embedded.root is None and embedded.pretrain_root is None and "embedded" in embedded.description
