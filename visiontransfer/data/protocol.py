"""What a datamodule offers to the rest of visiontransfer: small typed protocols.

Modules never read ``trainer.datamodule``: the facts they need are constructor arguments that
the CLI links from these attributes (``--data.image_size`` → ``--model.image_size``,
``num_classes`` and ``classes`` → ``--model.num_classes`` and ``--model.class_names``). Writers
and callbacks, which run with the trainer, read the datamodule through these protocols: where
each predicted item came from, and (for detection) the annotation file's own ids.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ImageData(Protocol):
    """Every visiontransfer datamodule."""

    image_size: int
    """Side (or longest side, for detection) of the images fed to the model, in pixels."""

    def has_split(self, split: str) -> bool:
        """Whether set-up built a ``split`` set (``train``, ``val``, ``test``, ``predict``)."""
        ...

    def source(self, split: str, index: int) -> str:
        """The file behind item ``index`` of ``split`` (``embedded:N`` for the embedded set)."""
        ...


@runtime_checkable
class LabeledData(ImageData, Protocol):
    """A datamodule of labeled images (classification, detection, segmentation)."""

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes (detection: the background not counted)."""
        ...


@runtime_checkable
class DetectionData(LabeledData, Protocol):
    """A datamodule of images with boxes."""

    @property
    def category_ids(self) -> list[int]:
        """The annotation file's own id of each class (COCO category ids), for COCO output."""
        ...

    def image_id(self, split: str, index: int) -> int | None:
        """The annotation file's id of item ``index`` of ``split`` (COCO), else None."""
        ...
