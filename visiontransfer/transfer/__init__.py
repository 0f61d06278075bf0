"""Transfer a backbone to downstream tasks: classification (detection follows)."""

from visiontransfer.transfer.classification import ImageClassifier, PredictionWriter

__all__ = ["ImageClassifier", "PredictionWriter"]
