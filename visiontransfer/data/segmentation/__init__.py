"""Semantic segmentation data: image / mask pairs from paired folders, Pascal VOC or a CSV
manifest, mask-aware augmentation, datasets with skipped-and-counted bad pairs, and the datamodule.

Mask convention: one class index per pixel, ``0..C-1`` naming ``classes[k]``, and the ignore index
(default 255, CamVid's and VOC's void) for pixels without a label; padding added by augmentation
or batching is the ignore index too. Batches hold ``mask`` as ``(B, H, W) int64``.
"""

from visiontransfer.data.segmentation.datamodule import SegmentationDataModule, SegmentationFormat
from visiontransfer.data.segmentation.datasets import (
    EMBEDDED_CLASSES,
    SegmentationDataset,
    SegmentationSample,
    SyntheticSegmentationDataset,
    collate_segmentation,
    colorize,
    mask_problem,
    palette,
)
from visiontransfer.data.segmentation.records import (
    VOC_CLASSES,
    MaskedImages,
    SegmentationFiles,
    load_mask,
    pair_folders,
    read_class_names,
    read_paired_folders,
    read_segmentation_manifest,
    read_voc,
)
from visiontransfer.data.segmentation.transforms import (
    SegmentationAugment,
    segmentation_eval_transform,
    segmentation_train_transform,
)

__all__ = [
    "EMBEDDED_CLASSES",
    "VOC_CLASSES",
    "MaskedImages",
    "SegmentationAugment",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SegmentationFiles",
    "SegmentationFormat",
    "SegmentationSample",
    "SyntheticSegmentationDataset",
    "collate_segmentation",
    "colorize",
    "load_mask",
    "mask_problem",
    "pair_folders",
    "palette",
    "read_class_names",
    "read_paired_folders",
    "read_segmentation_manifest",
    "read_voc",
    "segmentation_eval_transform",
    "segmentation_train_transform",
]
