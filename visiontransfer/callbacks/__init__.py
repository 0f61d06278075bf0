"""Callbacks that any module can use: a closing run summary and the online evaluation monitors."""

from visiontransfer.callbacks.online_eval import OnlineEvaluation, knn_predict, topk_accuracy
from visiontransfer.callbacks.summary import RunSummary

__all__ = ["OnlineEvaluation", "RunSummary", "knn_predict", "topk_accuracy"]
