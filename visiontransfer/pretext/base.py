"""The base of the pretext modules: :class:`~visiontransfer.system.BackboneSystem` as it is."""

from __future__ import annotations

from visiontransfer.system import BackboneSystem


class PretextModule(BackboneSystem):
    """Base of the self-supervised modules (backbone, normalisation, optimizer; see
    :class:`~visiontransfer.system.BackboneSystem` for the arguments)."""
