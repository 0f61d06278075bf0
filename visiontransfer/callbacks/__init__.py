"""Callbacks that any module can use: run summary, online evaluation, fault tolerance."""

from visiontransfer.callbacks.fault import NonFiniteGuard, NonFiniteLossError, ResumeCheckpoint
from visiontransfer.callbacks.online_eval import OnlineEvaluation, knn_predict, topk_accuracy
from visiontransfer.callbacks.summary import RunSummary

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "OnlineEvaluation",
    "ResumeCheckpoint",
    "RunSummary",
    "knn_predict",
    "topk_accuracy",
]
