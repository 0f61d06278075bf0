"""Transfer a backbone to downstream tasks: classification and object detection."""

from visiontransfer.transfer.base import TransferModule
from visiontransfer.transfer.classification import ImageClassifier
from visiontransfer.transfer.detection import ObjectDetector

__all__ = ["ImageClassifier", "ObjectDetector", "TransferModule"]
