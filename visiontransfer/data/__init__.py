"""Image data: decoding, indexing, the embedded set, augmentation presets and datamodules."""

from visiontransfer.data.classification import ClassificationDataModule
from visiontransfer.data.decode import IMAGE_EXTENSIONS, UnreadableImageError, load_rgb
from visiontransfer.data.index import PathTable, read_manifest, scan_class_folders, scan_images
from visiontransfer.data.pretrain import PretrainDataModule
from visiontransfer.data.subsets import stratified_split, stratified_subset
from visiontransfer.data.synthetic import SHAPES, render_scene

__all__ = [
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "ClassificationDataModule",
    "PathTable",
    "PretrainDataModule",
    "UnreadableImageError",
    "load_rgb",
    "read_manifest",
    "render_scene",
    "scan_class_folders",
    "scan_images",
    "stratified_split",
    "stratified_subset",
]
