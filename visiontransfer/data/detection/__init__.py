"""Object detection data: Pascal VOC, COCO and YOLO annotations read into one record format,
bbox-aware augmentation, and batches as lists (images of different sizes).

Label convention: every reader returns labels in ``1..C``, ``label`` naming ``classes[label - 1]``,
and 0 is reserved for the background, as torchvision's detectors expect
(:class:`~visiontransfer.transfer.detection.ObjectDetector` shifts them for the detectors that
count no background class). Boxes are absolute pixel ``xyxy`` (``x_min, y_min, x_max, y_max``)
in the image as displayed (EXIF orientation applied, as :func:`~visiontransfer.data.load_rgb`
decodes it), ``float32``.

Boxes partly outside their image are clipped to it; boxes with no area left (degenerate, or
entirely outside) are dropped; both are counted and reported in one warning naming the files.
An image with no box is kept as a negative. A malformed annotation file raises
:class:`AnnotationError` naming the file and the line.
"""

from visiontransfer.data.detection.coco import read_coco
from visiontransfer.data.detection.datamodule import AnnotationFormat, DetectionDataModule
from visiontransfer.data.detection.datasets import (
    DetectionDataset,
    DetectionSample,
    SyntheticDetectionDataset,
    collate_detection,
)
from visiontransfer.data.detection.records import (
    MIN_BOX_SIDE,
    AnnotationError,
    BoxReport,
    DetectionAnnotations,
    DetectionRecord,
    clean_boxes,
)
from visiontransfer.data.detection.splits import FILENAME_COLUMNS, read_split_names, select_records
from visiontransfer.data.detection.transforms import (
    FILL,
    DetectionAugment,
    detection_eval_transform,
    detection_train_transform,
)
from visiontransfer.data.detection.voc import read_voc
from visiontransfer.data.detection.yolo import image_size, read_yolo, yolo_class_names

__all__ = [
    "FILENAME_COLUMNS",
    "FILL",
    "MIN_BOX_SIDE",
    "AnnotationError",
    "AnnotationFormat",
    "BoxReport",
    "DetectionAnnotations",
    "DetectionAugment",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionRecord",
    "DetectionSample",
    "SyntheticDetectionDataset",
    "clean_boxes",
    "collate_detection",
    "detection_eval_transform",
    "detection_train_transform",
    "image_size",
    "read_coco",
    "read_split_names",
    "read_voc",
    "read_yolo",
    "select_records",
    "yolo_class_names",
]
