"""Self-supervised pretext tasks, one LightningModule per method."""

from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.byol import BYOL
from visiontransfer.pretext.colorization import Colorization
from visiontransfer.pretext.cpc import ContrastivePatches
from visiontransfer.pretext.dino import DINO
from visiontransfer.pretext.distillation import Distillation
from visiontransfer.pretext.mae import MAE
from visiontransfer.pretext.rotation import RotationPrediction
from visiontransfer.pretext.simclr import SimCLR
from visiontransfer.pretext.teacher import EMATeacher

__all__ = [
    "BYOL",
    "DINO",
    "MAE",
    "Colorization",
    "ContrastivePatches",
    "Distillation",
    "EMATeacher",
    "PretextModule",
    "RotationPrediction",
    "SimCLR",
]
