"""Transfer a backbone to downstream tasks: classification and object detection."""

from visiontransfer.transfer.classification import ImageClassifier, PredictionWriter
from visiontransfer.transfer.detection import DetectionWriter, ObjectDetector

__all__ = ["DetectionWriter", "ImageClassifier", "ObjectDetector", "PredictionWriter"]
