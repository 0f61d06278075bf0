"""Online evaluation of a pretraining run: a kNN monitor and a linear probe on frozen features.

Pretext losses say little about how useful the features are. :class:`OnlineEvaluation` embeds a
small labeled set with the module's ``features(images)`` at the end of validation epochs and
reports how well the features classify it, two ways:

* **kNN** (:func:`~visiontransfer.probes.knn_predict`): cosine similarity to a labeled bank,
  the ``k`` nearest neighbours vote for their class with weight
  ``exp(similarity / temperature)`` (Wu et al., "Unsupervised Feature Learning via
  Non-Parametric Instance Discrimination", CVPR 2018). No training.
* **Linear probe** (:class:`~visiontransfer.probes.LinearProbe`): a linear classifier trained on the detached,
  standardised bank features and evaluated on the queries, warm-started from the previous
  evaluation.

Both rules live in :mod:`visiontransfer.probes`, shared with the tools over saved embeddings
(:mod:`visiontransfer.features.classify`).

Under DDP every rank embeds its own share of the images, then the features are gathered so every
rank holds the same full bank and queries, in dataset order; see :class:`OnlineEvaluation`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from visiontransfer.data.classification import ClassificationDataModule
from visiontransfer.data.datasets import collate_samples
from visiontransfer.probes import LinearProbe, knn_predict, topk_accuracy

KNN_TOP1 = "online/knn_top1"
KNN_TOP5 = "online/knn_top5"
PROBE_TOP1 = "online/probe_top1"

# The online metrics are computed from gathered features and are the same on every rank, so they
# are logged with sync_dist=False on purpose: Lightning's advice to sync them is noise here.
warnings.filterwarnings(
    "ignore", message=r".*self\.log\('online/.*sync_dist=True", category=PossibleUserWarning
)


def _all_gather(pl_module: L.LightningModule, tensor: Tensor) -> Tensor:
    """``(W, ...)`` stack of ``tensor`` from every process (``W = 1`` without distribution)."""
    gathered = pl_module.all_gather(tensor)
    assert isinstance(gathered, Tensor)
    return gathered if gathered.dim() == tensor.dim() + 1 else gathered.unsqueeze(0)


class OnlineEvaluation(L.Callback):
    """kNN monitor and online linear probe on a labeled set, at the end of validation epochs.

    The callback owns a :class:`~visiontransfer.data.ClassificationDataModule` built from its own
    arguments, with evaluation transforms (no augmentation) for both sets. The embedded procedural
    set (``root=None``) gives its train split as the bank and its validation split as the
    queries; a folder with ``train/`` and ``test/`` (CIFAR-style) gives ``train`` as the bank and
    ``test`` as the queries (``val`` if there is no ``test``). The bank is the kNN memory and the
    probe's training set.

    Every ``every_n_epochs`` epochs (and on the last one), at the end of validation (not the
    sanity check; ``trainer.validate`` evaluates every time), the module is switched to eval mode
    and both sets are embedded with ``pl_module.features(images)`` under ``torch.no_grad``; the
    train/eval mode of every submodule is restored afterwards. In between, the last values are
    logged again so a ``ModelCheckpoint`` monitoring them finds them after the first evaluation
    (give it the same ``every_n_epochs`` if it monitors them from the start).

    **DDP**: rank ``r`` of ``W`` embeds the images ``r::W``; the features, labels and dataset
    indices are then padded to the largest share, gathered with ``pl_module.all_gather``,
    unpadded with a validity mask and sorted by index. Every rank so ends with the identical full
    bank and queries in dataset order (a single process runs the same code with ``W = 1``). The
    kNN scores and the probe, trained deterministically from identical features, weights and seed,
    are then identical on every rank, so no further synchronisation is needed and the metrics are
    logged with ``sync_dist=False`` (on GPUs, up to the non-determinism of some CUDA kernels in
    the probe's few steps; the kNN vote itself is summed deterministically). The embedded set
    shares scene numbers with the embedded pretraining set: its query images may have been seen,
    unlabeled, in pretraining (no label leaks; use ``root`` for a held-out test set).

    **Checkpoints**: the probe (weights, AdamW state, standardisation statistics), the last
    metrics, the epoch of the last evaluation and :attr:`history` are the callback's
    ``state_dict``, saved in checkpoints and restored on resume, so the probe keeps warm-starting.

    Logged: ``online/knn_top1``, ``online/knn_top5`` (with 5 classes or more) and
    ``online/probe_top1``. :attr:`history` holds one dict per evaluation (epoch, step, metrics,
    set sizes, seconds) for scripts to read.

    Args:
        root: Labeled images: a class-per-folder tree or a folder with ``train/`` and ``test/``
            (or ``val/``) class-per-folder trees; None for the embedded procedural set.
        samples_per_class: Keep at most this many bank images per class (None: all).
        max_query: Keep a seeded random subset of at most this many query images (None: all).
        image_size: Side of the centre crops fed to the model; match the pretraining size.
        batch_size: Images per forward pass when embedding.
        num_workers: DataLoader worker processes when embedding (0: in the main process).
        k: Neighbours of the kNN vote.
        temperature: Temperature of the kNN vote weights ``exp(similarity / temperature)``.
        knn: Run the kNN monitor.
        linear_probe: Run the linear probe.
        probe_epochs: Passes over the bank features per evaluation.
        probe_lr: AdamW learning rate of the probe.
        probe_weight_decay: AdamW weight decay of the probe.
        probe_batch_size: Probe mini-batch size; None trains full-batch (one step per pass).
        every_n_epochs: Evaluate every this many epochs (and at the last epoch).
        synthetic_size: Images of the embedded set (train + validation), when ``root`` is None.
        seed: Seed of the labeled subsets, the query subset, the embedded set and the probe.
    """

    def __init__(
        self,
        root: str | None = None,
        samples_per_class: int | None = None,
        max_query: int | None = None,
        image_size: int = 32,
        batch_size: int = 256,
        num_workers: int = 0,
        k: int = 20,
        temperature: float = 0.07,
        knn: bool = True,
        linear_probe: bool = True,
        probe_epochs: int = 100,
        probe_lr: float = 0.01,
        probe_weight_decay: float = 1e-4,
        probe_batch_size: int | None = None,
        every_n_epochs: int = 1,
        synthetic_size: int = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # (name, value, bound, strict): value > bound if strict else value >= bound; None passes.
        bounds = [
            ("k", k, 1, False), ("temperature", temperature, 0, True),
            ("every_n_epochs", every_n_epochs, 1, False), ("batch_size", batch_size, 1, False),
            ("num_workers", num_workers, 0, False), ("samples_per_class", samples_per_class, 1, False),
            ("max_query", max_query, 1, False), ("probe_epochs", probe_epochs, 1, False),
            ("probe_lr", probe_lr, 0, True), ("probe_weight_decay", probe_weight_decay, 0, False),
            ("probe_batch_size", probe_batch_size, 1, False),
        ]  # fmt: skip
        for name, value, bound, strict in bounds:
            if value is not None and (value <= bound if strict else value < bound):
                raise ValueError(f"OnlineEvaluation {name}={value} must be {'>' if strict else '>='} {bound}")
        if not (knn or linear_probe):
            raise ValueError("OnlineEvaluation with knn=false and linear_probe=false has nothing to do")
        self.root = root
        self.samples_per_class = samples_per_class
        self.max_query = max_query
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.k = k
        self.temperature = temperature
        self.knn = knn
        self.linear_probe = linear_probe
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        try:
            self.datamodule = ClassificationDataModule(
                root=root, samples_per_class=samples_per_class, image_size=image_size,
                batch_size=batch_size, augment="none", num_workers=num_workers,
                pin_memory=torch.cuda.is_available(), persistent_workers=False, seed=seed,
                synthetic_size=synthetic_size,
            )  # fmt: skip
        except ValueError as error:  # a MissingPathError stays one (a FileNotFoundError too)
            raise type(error)(f"OnlineEvaluation(root={root!r}): {error}") from None
        self.probe = LinearProbe(probe_epochs, probe_lr, probe_weight_decay, probe_batch_size, seed)
        self.history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}
        self.last_epoch: int = -1
        self._bank: Dataset[Any] | None = None
        self._queries: Dataset[Any] | None = None
        self._query_positions: np.ndarray | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(root=self.root, image_size=self.image_size)

    # -- data ------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.datamodule.num_classes

    def prepare(self) -> None:
        """Index the labeled set (once); errors name this callback and its ``root``."""
        if self._bank is not None:
            return
        try:
            self.datamodule.setup("fit")
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"OnlineEvaluation(root={self.root!r}): {error}") from None
        sets = self.datamodule.datasets
        self._bank = sets["train"]
        self._queries = sets["test"] if self.root is not None and "test" in sets else sets["val"]
        n = len(self._queries)  # type: ignore[arg-type]
        positions = np.arange(n)
        if self.max_query is not None and self.max_query < n:
            rng = np.random.default_rng(self.seed)
            positions = np.sort(rng.choice(n, self.max_query, replace=False))
        self._query_positions = positions

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "features", None)):
            raise TypeError(
                f"OnlineEvaluation needs a module with features(images) -> (B, D); "
                f"{type(pl_module).__name__} has none"
            )
        if stage in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            self.prepare()

    # -- when ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:  # a new run with this instance: its epochs start again
            self.last_epoch = -1

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        epoch = trainer.current_epoch
        if epoch == self.last_epoch:  # several validations per epoch: the first one evaluates
            return False
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        return last or (epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._due(trainer):
            # A monitor must not change training: its random draws (loader seeds, probe
            # initialisation and shuffling) come from a stream of its own, seeded by the epoch.
            devices = [pl_module.device] if pl_module.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 100_003 + trainer.current_epoch)
                metrics = self.evaluate(trainer, pl_module)
        else:
            metrics = self.last_metrics
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=False, prog_bar=name == KNN_TOP1)

    # -- what ------------------------------------------------------------------------------------
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Embed the bank and the queries, run kNN and the probe, record and return the metrics."""
        self.prepare()
        assert self._bank is not None and self._queries is not None and self._query_positions is not None
        start = time.perf_counter()
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            with torch.no_grad():
                bank_feats, bank_labels = self.embed(trainer, pl_module, self._bank, None)
                query_feats, query_labels = self.embed(
                    trainer, pl_module, self._queries, self._query_positions
                )
        finally:
            for module, mode in modes.items():
                module.train(mode)
        if bank_feats.shape[0] == 0 or query_feats.shape[0] == 0:
            warnings.warn("OnlineEvaluation: no readable bank or query image; skipped", stacklevel=2)
            return {}
        metrics: dict[str, float] = {}
        num_classes = self.num_classes
        if self.knn:
            scores = knn_predict(query_feats, bank_feats, bank_labels, num_classes, self.k, self.temperature)
            metrics[KNN_TOP1] = topk_accuracy(scores, query_labels, 1)
            if num_classes >= 5:
                metrics[KNN_TOP5] = topk_accuracy(scores, query_labels, 5)
        if self.linear_probe:
            self.probe.fit(bank_feats, bank_labels, num_classes, evaluation=len(self.history))
            metrics[PROBE_TOP1] = topk_accuracy(self.probe.predict(query_feats), query_labels, 1)
        self.last_metrics = metrics
        self.last_epoch = trainer.current_epoch
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                **metrics,
                "bank_size": int(bank_feats.shape[0]),
                "query_size": int(query_feats.shape[0]),
                "seconds": time.perf_counter() - start,
            }
        )
        return metrics

    def embed(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        dataset: Dataset[Any],
        positions: np.ndarray | None,
    ) -> tuple[Tensor, Tensor]:
        """Features and labels of ``dataset[positions]`` (all if None), gathered from every rank.

        Returns:
            ``(N, D)`` float32 features and ``(N,)`` labels on ``pl_module.device``, in dataset
            order and identical on every rank (unreadable files left out).
        """
        if positions is None:
            positions = np.arange(len(dataset))  # type: ignore[arg-type]
        device = pl_module.device
        shard = positions[trainer.global_rank :: trainer.world_size]
        loader = DataLoader(
            Subset(dataset, shard.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=device.type == "cuda",
        )
        feats, labels, index = [], [], []
        for batch in loader:
            self.datamodule.on_before_batch_transfer(batch, 0)  # counts unreadable files
            if batch["image"].shape[0] == 0:
                continue
            images = batch["image"].to(device, non_blocking=True)
            with trainer.precision_plugin.forward_context():
                out = pl_module.features(images)  # type: ignore[operator]
            feats.append(out.float().flatten(1))
            labels.append(batch["label"].to(device))
            index.append(batch["index"].to(device))
        local = torch.cat(feats) if feats else torch.zeros(0, 0, device=device)
        local_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
        local_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long, device=device)
        return self._gather(pl_module, local, local_labels, local_index)

    @staticmethod
    def _gather(
        pl_module: L.LightningModule, feats: Tensor, labels: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Gather uneven per-rank shares: pad to the largest, gather, drop padding, sort by index."""
        device = feats.device
        n, dim = feats.shape
        sizes = _all_gather(pl_module, torch.tensor([n, dim], device=device))  # (W, 2)
        longest, dim = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        padded = feats.new_zeros(longest, dim)
        padded[:n] = feats
        padded_labels = labels.new_full((longest,), -1)
        padded_labels[:n] = labels
        padded_index = index.new_full((longest,), -1)
        padded_index[:n] = index
        all_feats = _all_gather(pl_module, padded)  # (W, longest, D)
        all_labels = _all_gather(pl_module, padded_labels)
        all_index = _all_gather(pl_module, padded_index)
        valid = torch.arange(longest, device=device).view(1, -1) < sizes[:, :1]
        order = torch.argsort(all_index[valid])
        return all_feats[valid][order], all_labels[valid][order]

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe.state_dict(),
            "last_metrics": dict(self.last_metrics),
            "last_epoch": self.last_epoch,
            "history": [dict(entry) for entry in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe.load_state_dict(state_dict.get("probe"))
        self.last_metrics = dict(state_dict.get("last_metrics", {}))
        self.last_epoch = int(state_dict.get("last_epoch", -1))
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
