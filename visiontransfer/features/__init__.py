"""Feature extraction: embed every image, search neighbours, cluster, find duplicates, classify.

- :func:`visiontransfer.embed` (``visiontransfer embed``, :mod:`~visiontransfer.features.extract`):
  the pooled features of every image of a folder, manifest or shard set, chunked, resumable and
  split across processes, into a folder of plain files (:mod:`~visiontransfer.features.store`)
  that loads into :class:`Embeddings`;
- :func:`visiontransfer.neighbors` (``visiontransfer neighbors``, :mod:`~visiontransfer.features.nearest`):
  exact or approximate (faiss, :mod:`~visiontransfer.features.search`) nearest neighbours;
- :func:`cluster` (``visiontransfer clusters``): k-means, purity, NMI;
- :func:`find_duplicates` (``visiontransfer duplicates``): byte-identical files and near duplicates;
- :func:`classify` (``visiontransfer classify``): kNN and a linear probe over saved embeddings,
  with the online evaluator's rules (:mod:`visiontransfer.probes`).

``embed`` and ``neighbors`` run Lightning (they are above the callbacks, whose embeddings writer
reads :mod:`~visiontransfer.features.store`), so this package does not import them.
"""

from visiontransfer.features.classify import Classification, classify
from visiontransfer.features.clusters import Clusters, cluster
from visiontransfer.features.duplicates import Duplicates, find_duplicates
from visiontransfer.features.store import Embeddings

__all__ = ["Classification", "Clusters", "Duplicates", "Embeddings", "classify", "cluster", "find_duplicates"]
