"""What a pretext model learned, as pictures: plain functions returning image tensors or matplotlib
figures (``matplotlib.figure.Figure``, not attached to pyplot: display them in a notebook or
``fig.savefig(...)``).

- :func:`rotation_figure`: images in every rotation with the rotation a RotNet predicts;
- :func:`colorization_figure`: grey input, predicted colours and true colours (:func:`colorize`);
- :func:`neighbours_figure`: nearest neighbours of query images in feature space
  (:func:`embed`, :func:`nearest_neighbours`);
- :func:`embedding_figure`: a 2-D map of features coloured by class (:func:`pca_2d`);
- :func:`confusion_figure`: a classifier's confusion matrix;
- :func:`labeled_images`: a few labeled images of a class-folder tree (or the embedded set) to
  feed them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from visiontransfer.pretext import Colorization, RotationPrediction

RIGHT, WRONG = "tab:green", "tab:red"


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def to_hwc(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` image, ``uint8`` or float in [0, 1] (clamped), C = 1 or 3 → ``(H, W, 3)`` float array."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) image, got {tuple(image.shape)}")
    x = image.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0.0, 1.0)
    return x.expand(3, -1, -1).permute(1, 2, 0).numpy()


def _show(ax: Axes, image: Tensor, title: str = "", color: str = "black") -> None:
    ax.imshow(to_hwc(image), interpolation="nearest")
    ax.set_title(title, fontsize=8, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    images: Tensor,
    ncols: int,
    titles: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of images, row by row, each with an optional (coloured) title.

    Args:
        images: ``(N, C, H, W)``, ``uint8`` or float in [0, 1].
        ncols: Images per row.
        titles: One title per image.
        colors: One title colour per image.
        row_labels: One label per row, written left of it.
        title: Title of the figure.
    """
    from matplotlib.figure import Figure

    if images.ndim != 4 or images.shape[0] == 0 or ncols < 1:
        raise ValueError(
            f"image_grid needs (N >= 1, C, H, W) images and ncols >= 1, got {tuple(images.shape)}"
        )
    nrows = -(-images.shape[0] // ncols)
    fig = Figure(figsize=(1.2 * ncols + 0.4, 1.35 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= images.shape[0]:
            ax.set_axis_off()
            continue
        _show(ax, images[i], titles[i] if titles else "", colors[i] if colors else "black")
    for row, label in enumerate(row_labels or []):
        axes[row, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# -- rotation ------------------------------------------------------------------------------------
@torch.no_grad()
def predict_rotations(model: RotationPrediction, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every image in every rotation of the model, with the true and the predicted rotation.

    Returns:
        ``(R·N, C, H, W)`` rotated images, rotation-major (as
        :func:`~visiontransfer.pretext.ops.rotate_batch`), and ``(R·N,)`` true and ``(R·N,)``
        predicted indices into ``model.rotations``.
    """
    from visiontransfer.pretext.ops import rotate_batch

    was_training = model.training
    model.eval()
    rotated, truth = rotate_batch(images, model.rotations)
    predicted = model(rotated.to(_device(model))).argmax(dim=1).cpu()
    model.train(was_training)
    return rotated, truth, predicted


def rotation_figure(model: RotationPrediction, images: Tensor, max_images: int = 6) -> Figure:
    """One row per image, one column per rotation, titled with the predicted rotation (green: right).

    Args:
        model: A (trained) :class:`~visiontransfer.pretext.RotationPrediction`.
        images: ``(N, 3, H, W)`` ``uint8`` square images.
        max_images: Rows shown.
    """
    images = images[:max_images]
    n, rotations = images.shape[0], model.rotations
    rotated, truth, predicted = predict_rotations(model, images)
    order = [r * n + i for i in range(n) for r in range(len(rotations))]  # image-major
    right = (truth == predicted)[order].tolist()
    accuracy = float((truth == predicted).float().mean())
    return image_grid(
        rotated[order],
        ncols=len(rotations),
        titles=[f"pred {rotations[int(predicted[j])]}°" for j in order],
        colors=[RIGHT if ok else WRONG for ok in right],
        title=f"columns rotated by {', '.join(f'{r}°' for r in rotations)}; rotation accuracy {accuracy:.0%}",
    )


# -- colorization --------------------------------------------------------------------------------
@torch.no_grad()
def colorize(model: Colorization, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The grey input, the colours the model predicts for it, and the true colours.

    Args:
        model: A (trained) :class:`~visiontransfer.pretext.Colorization`.
        images: ``(N, 3, H, W)`` ``uint8`` RGB.

    Returns:
        Three ``(N, 3, H, W)`` float RGB tensors in [0, 1]: grey (L only), predicted (L with the
        predicted ab, annealed mean or regression, upsampled), true.
    """
    from visiontransfer.color import lab_to_rgb, rgb_to_lab

    was_training = model.training
    model.eval()
    true = images.float() / 255.0
    lightness = rgb_to_lab(true)[:, :1]
    ab = model.predict_ab(model(images.to(_device(model)))).cpu()
    ab = F.interpolate(ab, size=images.shape[-2:], mode="bilinear", align_corners=False)
    model.train(was_training)
    grey = lab_to_rgb(torch.cat([lightness, torch.zeros_like(ab)], dim=1))
    return grey, lab_to_rgb(torch.cat([lightness, ab], dim=1)), true


def colorization_figure(model: Colorization, images: Tensor, max_images: int = 8) -> Figure:
    """Three rows: grey input, predicted colours, true colours (:func:`colorize`)."""
    grey, predicted, true = colorize(model, images[:max_images])
    return image_grid(
        torch.cat([grey, predicted, true]),
        ncols=grey.shape[0],
        row_labels=["input (L)", "predicted", "true"],
        title="Colorization: grey input, predicted colours, true colours",
    )


# -- features ------------------------------------------------------------------------------------
@torch.no_grad()
def embed(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Pooled features ``(N, D)`` of ``uint8`` images, in eval mode.

    A visiontransfer module (pretext or transfer) normalises its input itself (``features()``);
    a plain backbone (e.g. from :func:`visiontransfer.load_backbone`) gets ``(x / 255 - mean) / std``
    with the ``mean`` and ``std`` of its ``config.json`` (``pretrained_cfg``).
    """
    from visiontransfer.system import BackboneSystem

    if not isinstance(model, BackboneSystem) and (mean is None or std is None):
        raise ValueError("embed: a plain backbone needs the mean and std of its input normalisation")
    device, was_training = _device(model), model.training
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        x = chunk.to(device)
        if isinstance(model, BackboneSystem):
            out.append(model.features(x).float().cpu())
            continue
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        out.append(model((x.float() / 255.0 - m) / s).float().flatten(1).cpu())
    model.train(was_training)
    return torch.cat(out)


def nearest_neighbours(queries: Tensor, bank: Tensor, k: int = 5) -> Tensor:
    """Indices ``(Q, k)`` of the ``k`` bank features most cosine-similar to each query, best first."""
    if bank.shape[0] == 0 or k < 1:
        raise ValueError(f"nearest_neighbours needs a non-empty bank and k >= 1, got {bank.shape[0]} and {k}")
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    return similarity.topk(min(k, bank.shape[0]), dim=1).indices


def neighbours_figure(
    query_images: Tensor,
    bank_images: Tensor,
    indices: Tensor,
    query_labels: Tensor | None = None,
    bank_labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Nearest neighbours in feature space",
) -> Figure:
    """One row per query: the query, then its neighbours (:func:`nearest_neighbours`); with labels,
    each image is titled with its class, neighbours green when of the query's class."""
    q, k = indices.shape
    images = torch.cat([torch.cat([query_images[i : i + 1], bank_images[indices[i]]]) for i in range(q)])
    titles: list[str] | None = None
    colors: list[str] | None = None
    if query_labels is not None and bank_labels is not None:
        names = list(class_names) if class_names else [str(c) for c in range(int(bank_labels.max()) + 1)]
        titles, colors = [], []
        for i in range(q):
            truth = int(query_labels[i])
            neighbours = [int(bank_labels[j]) for j in indices[i]]
            titles += [f"query: {names[truth]}", *(names[c] for c in neighbours)]
            colors += ["black", *(RIGHT if c == truth else WRONG for c in neighbours)]
    return image_grid(images, ncols=k + 1, titles=titles, colors=colors, title=title)


def pca_2d(features: Tensor) -> Tensor:
    """The first two principal components ``(N, 2)`` of ``(N, D)`` features (``torch.pca_lowrank``)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"pca_2d needs (N >= 2, D) features, got {tuple(features.shape)}")
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    q = min(2, *x.shape)
    _, _, v = torch.pca_lowrank(x, q=q, center=False)
    points = x @ v[:, :q]
    return F.pad(points, (0, 2 - q))  # D = 1: a zero second axis


def embedding_figure(
    points: Tensor,
    labels: Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "Features, first two principal components",
) -> Figure:
    """Scatter plot of 2-D points (e.g. :func:`pca_2d`), one colour per class."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    xy = points.detach().cpu().numpy()
    classes = labels.detach().cpu().numpy()
    for c in np.unique(classes):
        name = class_names[int(c)] if class_names else str(int(c))
        mask = classes == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=14, alpha=0.8, color=f"C{int(c) % 10}", label=name)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def confusion_figure(matrix: Tensor, names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """A confusion matrix ``(C, C)`` (rows: true class, columns: predicted), counts written in the
    cells for up to 20 classes."""
    from matplotlib.figure import Figure

    n = matrix.shape[0]
    fig = Figure(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix.detach().cpu().numpy(), cmap="Blues")
    ax.set_xticks(range(n), list(names), rotation=90, fontsize=7)
    ax.set_yticks(range(n), list(names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6)
    return fig


# -- data ----------------------------------------------------------------------------------------
def labeled_images(
    root: str | None,
    split: str = "test",
    per_class: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> tuple[Tensor, Tensor, list[str]]:
    """A few labeled images of each class, decoded and centre-cropped, without augmentation.

    Args:
        root: A class-folder tree, or a folder with ``train/`` (and ``val/``, ``test/``) trees, as
            :class:`~visiontransfer.data.ClassificationDataModule` reads; None: the embedded set.
        split: ``train``, ``val`` or ``test``.
        per_class: Images per class (a seeded, stratified draw; fewer where a class has fewer).
        image_size: Side of the images.
        seed: Seed of the draw.

    Returns:
        ``(N, 3, H, W)`` ``uint8`` images, ``(N,)`` labels and the class names.
    """
    from visiontransfer.data import ClassificationDataModule, stratified_subset
    from visiontransfer.data.datasets import collate_samples

    data = ClassificationDataModule(
        root=root,
        samples_per_class=per_class,
        image_size=image_size,
        augment="none",
        num_workers=0,
        seed=seed,
    )
    data.setup("fit")
    if split not in data.datasets:
        raise ValueError(f"labeled_images: no {split!r} split in {root!r}; it has {sorted(data.datasets)}")
    dataset = data.datasets[split]
    labels = np.asarray(dataset.labels)  # type: ignore[attr-defined]
    keep = stratified_subset(labels, samples_per_class=per_class, seed=seed)
    batch = collate_samples([dataset[int(i)] for i in keep])
    return batch["image"], batch["label"], list(data.classes)
