"""Self-supervised pretext tasks, one LightningModule per method."""

from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.rotation import RotationPrediction

__all__ = ["PretextModule", "RotationPrediction"]
