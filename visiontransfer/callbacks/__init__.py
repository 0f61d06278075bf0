"""Callbacks that any module can use: run summary, online evaluation, fault tolerance, data
statistics, prediction writers."""

from visiontransfer.callbacks.fault import NonFiniteGuard, NonFiniteLossError, ResumeCheckpoint
from visiontransfer.callbacks.online_eval import OnlineEvaluation, knn_predict, topk_accuracy
from visiontransfer.callbacks.statistics import DataStatistics
from visiontransfer.callbacks.summary import RunSummary
from visiontransfer.callbacks.writers import DetectionWriter, PredictionWriter

__all__ = [
    "DataStatistics",
    "DetectionWriter",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "OnlineEvaluation",
    "PredictionWriter",
    "ResumeCheckpoint",
    "RunSummary",
    "knn_predict",
    "topk_accuracy",
]
