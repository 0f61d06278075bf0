"""Self-supervised pretext tasks, one LightningModule per method."""

from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.cpc import ContrastivePatches
from visiontransfer.pretext.rotation import RotationPrediction
from visiontransfer.pretext.simclr import SimCLR

__all__ = ["ContrastivePatches", "PretextModule", "RotationPrediction", "SimCLR"]
