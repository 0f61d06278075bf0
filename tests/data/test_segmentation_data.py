"""Segmentation data: paired folders on real CamVid files, Pascal VOC palette masks, CSV manifests,
mask-aware augmentation keeping image and mask aligned (planted pattern), bad pairs skipped and
counted, label budgets, batching, the embedded set's masks, mid-epoch resume, one pass per image
under DDP."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from visiontransfer.data.datasets import Skipped
from visiontransfer.data.protocol import LabeledData
from visiontransfer.data.segmentation import (
    EMBEDDED_CLASSES,
    VOC_CLASSES,
    SegmentationDataModule,
    SegmentationDataset,
    collate_segmentation,
    colorize,
    load_mask,
    palette,
    read_paired_folders,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from visiontransfer.data.segmentation.records import MaskedImages, segmentation_splits
from visiontransfer.data.synthetic import render_scene
from visiontransfer.data.transforms import seed_transform
from visiontransfer.errors import ConfigError

CAMVID_CLASSES = 11


@pytest.fixture(scope="module")
def camvid(shared_data: Path) -> Path:
    folder = shared_data / "camvid"
    if not (folder / "images" / "train").is_dir():
        pytest.skip(f"CamVid not found at {folder.resolve()} (../shared/data/camvid)")
    return folder


def _link_camvid(camvid: Path, dest: Path, counts: dict[str, int], flat: bool = False) -> Path:
    """``dest/images/<split>/`` and ``dest/masks/<split>/`` (or flat ``images/``, ``masks/``) with
    links to the first ``counts[split]`` CamVid pairs, and its ``classes.txt``."""
    for split, count in counts.items():
        for image in sorted((camvid / "images" / split).glob("*.jpg"))[:count]:
            mask = camvid / "masks" / split / f"{image.stem}.png"
            for source, kind in ((image, "images"), (mask, "masks")):
                folder = dest / kind if flat else dest / kind / split
                folder.mkdir(parents=True, exist_ok=True)
                os.symlink(source, folder / source.name)
    os.symlink(camvid / "classes.txt", dest / "classes.txt")
    return dest


@pytest.fixture(scope="module")
def camvid_small(camvid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _link_camvid(camvid, tmp_path_factory.mktemp("camvid"), {"train": 12, "val": 4, "test": 4})


def _dm(root: Path | None = None, **kwargs) -> SegmentationDataModule:
    args = {"image_size": 240, "batch_size": 4, "num_workers": 0, **kwargs}
    return SegmentationDataModule(root=None if root is None else str(root), **args)


# -- readers on real files -----------------------------------------------------------------------
def test_camvid_pairs_classes_and_exact_masks(camvid_small: Path, camvid: Path) -> None:
    dm = _dm(camvid_small)
    assert isinstance(dm, LabeledData)
    assert dm.num_classes == CAMVID_CLASSES and dm.classes[:3] == ["sky", "building", "pole"]
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 12, "val": 4, "test": 4, "predict": 4}
    sample = dm.datasets["test"][0]
    name = Path(dm.source("test", 0)).name
    assert dm.source("test", 0).endswith(f"images/test/{name}") and sample["orig_size"] == (180, 240)
    truth = np.asarray(Image.open(camvid / "masks" / "test" / name.replace(".jpg", ".png")))
    assert sample["image"].shape == (3, 180, 240) and sample["mask"].dtype == torch.int64
    assert torch.equal(sample["mask"], torch.from_numpy(truth.astype(np.int64)))  # eval at 240 px: as stored
    assert set(sample["mask"].unique().tolist()) <= {*range(CAMVID_CLASSES), 255}
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 180, 240) and batch["mask"].shape == (4, 180, 240)
    assert batch["size"].tolist() == [[180, 240]] * 4 and batch["skipped"] == []
    assert segmentation_splits(str(camvid_small)) == ["train", "val", "test"]


def test_flat_folders_hold_out_val_and_label_budgets_nest(camvid: Path, tmp_path: Path) -> None:
    root = _link_camvid(camvid, tmp_path / "flat", {"train": 20}, flat=True)
    assert segmentation_splits(str(root)) == ["train"]
    full = _dm(root, val_fraction=0.2, seed=3)
    full.setup("fit")
    assert (
        len(full.datasets["train"]) == 16 and len(full.datasets["val"]) == 4 and "test" not in full.datasets
    )
    assert full.has_split("predict") and not full.has_split("test")

    def train_files(**budget) -> list[str]:
        dm = _dm(root, val_fraction=0.2, seed=3, **budget)
        dm.setup("fit")
        val = [dm.source("val", i) for i in range(len(dm.datasets["val"]))]
        assert val == [full.source("val", i) for i in range(4)]  # the same hold-out for every budget
        return [dm.source("train", i) for i in range(len(dm.datasets["train"]))]

    quarter, half, five = (
        train_files(label_fraction=0.25),
        train_files(label_fraction=0.5),
        train_files(num_images=5),
    )
    assert len(quarter) == 4 and len(half) == 8 and len(five) == 5
    assert set(quarter) <= set(five) <= set(half)  # one seeded order: smaller budgets inside larger
    with pytest.raises(ConfigError, match=r"either --data\.label_fraction or --data\.num_images"):
        _dm(root, label_fraction=0.5, num_images=3)
    with pytest.raises(ConfigError, match=r"--data.label_fraction=0 must be in \(0, 1\]"):
        _dm(root, label_fraction=0)


def test_voc_palette_masks_lists_and_default_classes(camvid: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    names = [p.stem for p in sorted((camvid / "images" / "train").glob("*.jpg"))[:5]]
    for name in names:
        os.symlink(camvid / "images" / "train" / f"{name}.jpg", root / "JPEGImages" / f"{name}.jpg")
        values = np.asarray(Image.open(camvid / "masks" / "train" / f"{name}.png"))
        paletted = Image.fromarray(values)
        paletted.putpalette(palette(256).flatten().tolist())  # a palette PNG in VOC's colours
        paletted.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join([*names[3:], "2007_000000"]) + "\n")
    assert segmentation_splits(str(root)) == ["train", "val"]
    dm = _dm(root)
    assert dm.classes == list(VOC_CLASSES) and dm.num_classes == 21
    with pytest.warns(UserWarning, match="2007_000000"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["val"]) == 2
    assert any("2007_000000" in p for p in dm.skipped_files)  # listed but absent: counted
    mask = dm.datasets["val"][0]["mask"]  # evaluation transform at 240 px: the mask as stored
    expected = np.asarray(Image.open(camvid / "masks" / "train" / f"{names[3]}.png"))
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.int64)))  # palette index = class


def test_csv_manifest_with_splits(camvid: Path, tmp_path: Path) -> None:
    rows = ["image,mask,split"]
    for split, count in (("train", 6), ("test", 2)):
        for image in sorted((camvid / "images" / split).glob("*.jpg"))[:count]:
            rows.append(f"{image},{camvid / 'masks' / split / (image.stem + '.png')},{split}")
    rows.append(f"{image},,train")  # a row without its mask: skipped and counted
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    dm = SegmentationDataModule(manifest=str(manifest), classes=[f"c{i}" for i in range(11)], num_workers=0)
    with pytest.warns(UserWarning, match="without a mask|skipped"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 6 and len(dm.datasets["test"]) == 2
    assert dm.skipped_files == [str(image)]
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,cat\n")
    with pytest.raises(ConfigError, match=r"bad.csv:1: a segmentation manifest needs 'image' and 'mask'"):
        SegmentationDataModule(manifest=str(tmp_path / "bad.csv"), classes=["a", "b"], num_workers=0).setup(
            "fit"
        )


def test_classes_from_the_config_or_an_error_naming_the_fix(camvid: Path, tmp_path: Path) -> None:
    root = _link_camvid(camvid, tmp_path / "cv", {"train": 3})
    (root / "classes.txt").unlink()
    with pytest.raises(ConfigError, match=r"no class names for --data.root=.*classes.txt.*--data.classes"):
        _ = _dm(root).classes
    assert _dm(root, classes=[str(i) for i in range(11)]).num_classes == 11
    with pytest.raises(ConfigError, match="lists a class twice"):
        _dm(root, classes=["a", "a"])


# -- bad input -------------------------------------------------------------------------------------
def test_bad_pairs_are_skipped_and_counted_naming_the_file(camvid: Path, tmp_path: Path) -> None:
    root = _link_camvid(camvid, tmp_path / "cv", {"train": 6, "val": 2})
    masks = root / "masks" / "train"
    files = sorted(masks.iterdir())
    small = files[0]  # another size than its image
    small.unlink()
    Image.new("L", (120, 90)).save(small)
    stray = files[1]  # a value outside 0..10 and 255
    values = np.asarray(Image.open(camvid / "masks" / "train" / stray.name)).copy()
    values[5, 5] = 42
    stray.unlink()
    Image.fromarray(values).save(stray)
    colour = files[2]  # an RGB colour-coded mask
    colour.unlink()
    Image.new("RGB", (240, 180), (128, 64, 128)).save(colour)
    files[3].unlink()  # a missing mask
    dm = _dm(root, augment="none", batch_size=5)
    with pytest.warns(UserWarning, match="skipped 1"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 5
    seen = 0
    for batch in dm.train_dataloader():
        seen += batch["image"].shape[0]
        dm.on_before_batch_transfer(batch, 0)
    assert seen == 2  # 5 pairs, 3 of them unusable
    reasons = dm.skip_log.reasons
    assert "must be the same size" in reasons[str(small)] and "120x90" in reasons[str(small)]
    assert "[42] are outside 0..10" in reasons[str(stray)]
    assert "a RGB mask" in reasons[str(colour)]
    assert any(
        p.endswith(files[3].name.replace(".png", ".jpg")) and "no mask" in r for p, r in reasons.items()
    )


def test_nothing_usable_is_an_error(camvid: Path, tmp_path: Path) -> None:
    root = _link_camvid(camvid, tmp_path / "cv", {"train": 3, "val": 1})
    for mask in (root / "masks" / "train").iterdir():
        mask.unlink()
        Image.new("L", (10, 10)).save(mask)
    with pytest.raises(
        ConfigError, match=r"(?s)no usable image / mask pair in --data.root=.*must be the same size"
    ):
        _dm(root).setup("fit")
    empty = tmp_path / "nomasks"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    os.symlink(next((camvid / "images" / "train").iterdir()), empty / "images" / "a.jpg")
    (empty / "classes.txt").write_text("a\nb\n")
    with (
        pytest.raises(ConfigError, match=r"no training image with a mask; e.g. .*a.jpg: no mask"),
        pytest.warns(UserWarning),
    ):
        _dm(empty).setup("fit")
    with pytest.raises(FileNotFoundError, match="has no masks/ folder"):
        (empty / "masks").rmdir()
        read_paired_folders(str(empty))


def test_load_mask_modes(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for mode in ("L", "P"):
        image = Image.fromarray(values)
        if mode == "P":
            image.putpalette(palette(256).flatten().tolist())  # the L image becomes a palette image
        assert image.mode == mode
        image.save(tmp_path / f"{mode}.png")
        assert np.array_equal(load_mask(tmp_path / f"{mode}.png"), values)
    deep = (np.arange(12, dtype=np.uint16) * 300).reshape(3, 4)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = load_mask(tmp_path / "deep.png")
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, deep)
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in (("empty.png", "empty"), ("missing.png", "not found")):
        with pytest.raises(Exception, match=reason):
            load_mask(tmp_path / name)


# -- augmentation keeps image and mask aligned -----------------------------------------------------
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def _planted(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of coloured blocks in an asymmetric layout (no flip or crop maps it onto itself) and
    its mask: the class of each pixel is the index of its colour."""
    rng = np.random.default_rng(0)
    rows, cols = 5, 7
    grid = rng.integers(0, len(COLOURS), (rows, cols))
    mask = np.kron(grid, np.ones((height // rows + 1, width // cols + 1), dtype=np.int64))[:height, :width]
    return COLOURS[mask], mask.astype(np.uint8)


def _interior(mask: np.ndarray, reach: int = 2) -> np.ndarray:
    """Pixels whose class is also that of every pixel within ``reach`` rows and columns (away from
    block edges, which interpolation of the image blurs)."""
    padded = np.pad(mask.astype(np.int64), reach, constant_values=-1)
    height, width = mask.shape
    same = np.ones(mask.shape, dtype=bool)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            same &= padded[reach + dy : reach + dy + height, reach + dx : reach + dx + width] == mask
    return same


def _decode(image: np.ndarray) -> np.ndarray:
    """The class each pixel's colour says (the nearest of :data:`COLOURS`)."""
    distance = ((image.astype(np.int64)[:, :, None, :] - COLOURS[None, None].astype(np.int64)) ** 2).sum(-1)
    return distance.argmin(-1)


@pytest.mark.parametrize("augment", ["standard", "flip", "none"])
@pytest.mark.parametrize(("image_size", "crop_size", "shape"), [(96, 64, (75, 100)), (48, 48, (40, 56))])
def test_augmentation_keeps_image_and_mask_aligned(
    augment: str, image_size: int, crop_size: int, shape: tuple[int, int]
) -> None:
    image, mask = _planted(*shape)
    transform = segmentation_train_transform(image_size, crop_size, augment, ignore_index=255)  # type: ignore[arg-type]
    for seed in range(12):
        seed_transform(transform, seed)
        out = transform(image=image, mask=mask)
        got_image, got_mask = out["image"], out["mask"]
        assert got_image.shape == (crop_size, crop_size, 3) and got_mask.shape == (crop_size, crop_size)
        assert set(np.unique(got_mask)) <= {0, 1, 2, 3, 255}  # nearest neighbour: no blended labels
        inside = _interior(got_mask) & (got_mask != 255)
        decoded = _decode(got_image)
        assert inside.mean() > 0.15 and (decoded == got_mask)[inside].mean() > 0.99, (augment, seed)
        # The check sees misalignment: the mirrored mask (what a flip of the image alone gives) fails it.
        mirrored = got_mask[:, ::-1]
        assert (decoded == mirrored)[_interior(mirrored) & (mirrored != 255)].mean() < 0.8
        padding = _interior((got_mask == 255).astype(np.uint8)) & (got_mask == 255)
        if padding.any():  # pixels the augmentation added: black in the image, ignored in the mask
            assert got_image[padding].max() < 40


def test_eval_resizes_the_longest_side_and_masks_stay_classes() -> None:
    image, mask = _planted(90, 120)
    out = segmentation_eval_transform(60)(image=image, mask=mask)
    assert out["image"].shape == (45, 60, 3) and set(np.unique(out["mask"])) <= {0, 1, 2, 3}
    with pytest.raises(ConfigError, match=r"--data.image_size=8 is too small"):
        segmentation_eval_transform(8)
    with pytest.raises(ConfigError, match=r"--data.augment='zoom'"):
        segmentation_train_transform(64, 64, "zoom")  # type: ignore[arg-type]


def test_collate_pads_with_the_ignore_index_and_keeps_sizes() -> None:
    samples = [
        {"image": torch.full((3, 4, 6), 7, dtype=torch.uint8), "mask": torch.ones(4, 6, dtype=torch.int64),
         "index": 0, "orig_size": (8, 12)},
        Skipped("bad.png", "mask is 1x1 but its image 2x2"),
        {"image": torch.full((3, 5, 3), 9, dtype=torch.uint8), "mask": torch.zeros(5, 3, dtype=torch.int64),
         "index": 2, "orig_size": (5, 3)},
    ]  # fmt: skip
    batch = collate_segmentation(samples, ignore_index=99)
    assert batch["image"].shape == (2, 3, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert batch["size"].tolist() == [[4, 6], [5, 3]] and batch["orig_size"].tolist() == [[8, 12], [5, 3]]
    assert (batch["mask"][0, 4] == 99).all() and (batch["mask"][1, :, 3:] == 99).all()
    assert (batch["image"][1, :, :, 3:] == 0).all() and batch["index"].tolist() == [0, 2]
    assert batch["skipped"] == [("bad.png", "mask is 1x1 but its image 2x2")]
    empty = collate_segmentation([Skipped("a", "b")])
    assert empty["image"].shape[0] == 0 and empty["mask"].shape[0] == 0


def test_palette_and_colorize() -> None:
    colours = palette(4)
    assert colours.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]  # VOC's colour map
    drawn = colorize(torch.tensor([[0, 1], [3, 255]]), 4)
    assert drawn.shape == (3, 2, 2) and drawn[:, 1, 1].tolist() == [255, 255, 255]  # ignored: white
    assert drawn[:, 0, 1].tolist() == [128, 0, 0]


# -- the embedded set, resume, DDP -----------------------------------------------------------------
def test_embedded_set_serves_masks_of_its_scenes() -> None:
    dm = _dm(image_size=48, synthetic_size=32, augment="none")
    assert dm.classes == list(EMBEDDED_CLASSES) and dm.num_classes == 11
    dm.setup("fit")
    test = dm.datasets["test"]
    sample = test[0]
    scene = render_scene(int(test.scenes[0]), 48, 10, 0)
    assert torch.equal(sample["mask"], torch.from_numpy(scene.mask.astype(np.int64)))
    assert dm.source("test", 0) == f"embedded:{int(test.scenes[0])}"
    assert int(sample["mask"].max()) == scene.label + 1 or (sample["mask"] > 0).any()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and int(batch["mask"].max()) <= 10
    budget = _dm(image_size=48, synthetic_size=32, num_images=5)
    budget.setup("fit")
    assert len(budget.datasets["train"]) == 5


def test_loader_resumes_mid_epoch_with_the_same_batches(camvid_small: Path) -> None:
    def datamodule() -> SegmentationDataModule:
        dm = _dm(camvid_small, image_size=96, crop_size=64, batch_size=3)
        dm.setup("fit")
        return dm

    full = list(datamodule().train_dataloader())
    first = datamodule()
    seen = [batch for _, batch in zip(range(2), first.train_dataloader(), strict=False)]
    state = first.state_dict()
    resumed = datamodule()
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert len(seen) + len(rest) == len(full) == 4
    for a, b in zip(seen + rest, full, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])  # same crops


def test_evaluation_images_are_seen_once_across_processes(camvid_small: Path) -> None:
    seen: list[int] = []
    for rank in range(3):
        dm = _dm(camvid_small, batch_size=1)
        dm.setup("test")
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)  # type: ignore[assignment]
        seen += [int(i) for batch in dm.test_dataloader() for i in batch["index"]]
    assert sorted(seen) == [0, 1, 2, 3]  # 4 images over 3 processes: none repeated to even shares out


def test_dataset_takes_pairs_and_checks_them(camvid: Path) -> None:
    images = sorted((camvid / "images" / "train").glob("*.jpg"))[:2]
    pairs = [(str(i), str(camvid / "masks" / "train" / f"{i.stem}.png")) for i in images]
    files = MaskedImages.of(pairs).take([1])
    dataset = SegmentationDataset(files, segmentation_eval_transform(240), num_classes=3)
    skipped = dataset[0]  # CamVid has 11 classes: 3 are too few
    assert isinstance(skipped, Skipped) and skipped.path == pairs[1][1] and "outside 0..2" in skipped.reason
