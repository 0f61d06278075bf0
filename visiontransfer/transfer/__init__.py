"""Transfer a backbone to downstream tasks: classification, object detection and semantic segmentation."""

from visiontransfer.transfer.base import TransferModule
from visiontransfer.transfer.classification import ImageClassifier
from visiontransfer.transfer.detection import ObjectDetector
from visiontransfer.transfer.segmentation import SemanticSegmenter

__all__ = ["ImageClassifier", "ObjectDetector", "SemanticSegmenter", "TransferModule"]
