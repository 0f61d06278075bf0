"""Callbacks that any module can use: run summary, online evaluation, fault tolerance, data
statistics, prediction writers (classes, boxes, masks)."""

from visiontransfer.callbacks.fault import NonFiniteGuard, NonFiniteLossError, ResumeCheckpoint
from visiontransfer.callbacks.online_eval import OnlineEvaluation
from visiontransfer.callbacks.statistics import DataStatistics
from visiontransfer.callbacks.summary import RunSummary
from visiontransfer.callbacks.writers import DetectionWriter, PredictionWriter, SegmentationWriter

__all__ = [
    "DataStatistics",
    "DetectionWriter",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "OnlineEvaluation",
    "PredictionWriter",
    "ResumeCheckpoint",
    "RunSummary",
    "SegmentationWriter",
]
