"""visiontransfer: self-supervised pretraining and transfer learning for computer vision."""

import os

# albumentations checks online for a newer release at import: ~2 s lost offline (clusters).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
