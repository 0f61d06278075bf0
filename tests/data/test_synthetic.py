"""The embedded procedural set: deterministic scenes with consistent labels and boxes."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from visiontransfer.data.datasets import SyntheticDataset
from visiontransfer.data.synthetic import SHAPES, render_scene, scene_label


def test_scene_is_deterministic_by_seed_and_index():
    first, again = render_scene(7, 32, seed=3), render_scene(7, 32, seed=3)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    np.testing.assert_array_equal(first.box_labels, again.box_labels)
    assert first.label == again.label


def test_different_seeds_and_indices_differ():
    base = render_scene(0, 32, seed=0).image
    assert not np.array_equal(base, render_scene(0, 32, seed=1).image)
    assert not np.array_equal(base, render_scene(1, 32, seed=0).image)
    labels = {s: [render_scene(i, 16, seed=s).label for i in range(30)] for s in (0, 1)}
    assert labels[0] != labels[1]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_image_boxes_and_labels_are_consistent(size: int):
    seen_distractors = 0
    for index in range(40):
        scene = render_scene(index, size, seed=2)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert scene.boxes.dtype == np.float32 and scene.box_labels.dtype == np.int64
        assert scene.boxes.shape == (len(scene.box_labels), 4)
        assert 1 <= len(scene.box_labels) <= 2  # the main object and at most one distractor
        x0, y0, x1, y1 = scene.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
        assert (x1 - x0 >= 1).all() and (y1 - y0 >= 0.5).all()  # non-degenerate
        assert scene.label == scene.box_labels[0]
        assert (scene.box_labels[1:] != scene.label).all()  # distractors are other classes
        assert ((scene.box_labels >= 0) & (scene.box_labels < len(SHAPES))).all()
        seen_distractors += len(scene.box_labels) - 1
        # The main object is drawn: its box is not all background.
        bx0, by0, bx1, by1 = (int(v) for v in scene.boxes[0])
        assert scene.image[by0 : max(by1, by0 + 1), bx0 : max(bx1, bx0 + 1)].std() > 0
        # The mask holds the classes of the objects (k + 1), the main one the most visible.
        assert scene.mask.shape == (size, size) and scene.mask.dtype == np.uint8
        assert set(np.unique(scene.mask)) <= {0, *(int(c) + 1 for c in scene.box_labels)}
        counts = np.bincount(scene.mask.ravel(), minlength=len(SHAPES) + 1)
        assert counts[scene.label + 1] == counts[1:].max() > 0
    assert seen_distractors > 0


def test_nuisances_vary_and_the_shape_alone_is_the_class():
    """Colour, scale and position vary within a class; the mask's area share spans a wide range."""
    scenes = [render_scene(i, 64, seed=5) for i in range(200)]
    for label in range(len(SHAPES)):
        own = [s for s in scenes if s.label == label]
        assert len(own) >= 8
        colours = np.stack([s.image[s.mask == label + 1].mean(axis=0) for s in own])
        areas = np.array([(s.mask == label + 1).mean() for s in own])
        centres = np.array([np.argwhere(s.mask == label + 1).mean(axis=0) for s in own])
        assert colours.std(axis=0).mean() > 30  # no class has a colour of its own
        assert areas.max() / areas.min() > 1.5 and centres.std(axis=0).min() > 2


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_scene_label_matches_render(num_classes: int):
    labels = []
    for index in range(60):
        label = scene_label(index, num_classes, seed=4)
        assert label == render_scene(index, 16, num_classes, seed=4).label
        labels.append(label)
    assert set(labels) == set(range(num_classes))  # every class occurs


def test_invalid_arguments():
    with pytest.raises(ValueError, match="image_size=8"):
        render_scene(0, 8)
    with pytest.raises(ValueError, match="num_classes=1"):
        render_scene(0, 32, num_classes=1)
    with pytest.raises(ValueError, match="num_classes=11"):
        render_scene(0, 32, num_classes=11)


def test_synthetic_dataset_serves_scenes_in_order():
    scenes = np.array([5, 3, 9])
    dataset = SyntheticDataset(scenes, A.Compose([]), image_size=32, num_classes=10, seed=1)
    assert len(dataset) == 3
    np.testing.assert_array_equal(dataset.labels, [scene_label(int(i), 10, 1) for i in scenes])
    sample = dataset[1]
    assert sample["index"] == 1
    assert sample["label"] == render_scene(3, 32, 10, 1).label
    assert sample["image"].shape == (3, 32, 32)
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), render_scene(3, 32, 10, 1).image)


def test_no_shape_is_another_turned_by_quarter_turns():
    """A quarter turn of an image never makes one class look like another (or like itself turned
    back), so every class has a clear "up"."""
    from visiontransfer.data.synthetic import _object_mask

    masks = {s: _object_mask(s, 64, 32, 32, 26, 0.0) for s in SHAPES}
    for a, mask in masks.items():
        assert mask.mean() > 0.15, a  # a solid shape, not a sliver
        for b, other in masks.items():
            for quarter in range(1 if a == b else 0, 4):
                turned = np.rot90(mask, quarter)
                iou = (turned & other).sum() / (turned | other).sum()
                assert iou < 0.85, (a, b, quarter, iou)


def test_cached_scenes_equal_renders_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch):
    from visiontransfer.data import datasets

    rendered: list[int] = []
    real = datasets.render_scene

    def counting(index: int, *args: object):
        rendered.append(index)
        return real(index, *args)

    monkeypatch.setattr(datasets, "render_scene", counting)
    monkeypatch.setattr(datasets, "SCENE_CACHE_BYTES", 2 * 32 * 32 * 3)  # room for two scenes
    dataset = SyntheticDataset(np.array([4, 7, 2]), A.Compose([]), image_size=32, num_classes=10, seed=0)
    first = [dataset[i]["image"] for i in range(3)]
    again = [dataset[i]["image"] for i in range(3)]
    assert rendered == [4, 7, 2, 2]  # the first two were kept, the third did not fit
    for a, b, scene in zip(first, again, (4, 7, 2), strict=True):
        assert torch.equal(a, b)
        np.testing.assert_array_equal(a.permute(1, 2, 0).numpy(), real(scene, 32, 10, 0).image)
    # A real training transform (crop, flip) leaves the kept scenes as rendered, and they are read-only.
    from visiontransfer.data.transforms import train_transform

    augmented = SyntheticDataset(np.array([4, 7]), train_transform(32, "crop_flip"), 32, 10, 0)
    for _ in range(3):
        for i in range(2):
            augmented[i]
    for i, scene in enumerate((4, 7)):
        kept = augmented.scene_image(i)
        assert not kept.flags.writeable
        np.testing.assert_array_equal(kept, real(scene, 32, 10, 0).image)
    import pickle

    assert pickle.loads(pickle.dumps(augmented))._rendered == {}  # spawned workers render their own
