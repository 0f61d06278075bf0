"""Self-supervised pretext tasks, one LightningModule per method."""

from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.colorization import Colorization
from visiontransfer.pretext.cpc import ContrastivePatches
from visiontransfer.pretext.rotation import RotationPrediction
from visiontransfer.pretext.simclr import SimCLR

__all__ = ["Colorization", "ContrastivePatches", "PretextModule", "RotationPrediction", "SimCLR"]
