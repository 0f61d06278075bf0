"""Saved embeddings against the online evaluator, and clusters against a random init, on CIFAR-10.

    python benchmarks/features_cifar10.py --checkpoint runs/.../last.ckpt   # a pretext checkpoint
    python benchmarks/features_cifar10.py                                  # pretrains SimCLR first

With ``--checkpoint`` missing, pretrains SimCLR with the product's own command (10,000 CIFAR-10
training images in a manifest, 4 CPU epochs, the README's CPU recipe)::

    visiontransfer fit --config configs/pretrain/simclr.yaml --data.manifest OUT/train_10000.txt \\
        --model.small_input_stem false --model.projection_hidden_dim 256 --model.optimizer adamw \\
        --model.lr 2e-3 --model.weight_decay 0.05 --model.warmup_epochs 1 --trainer.max_epochs 4

Then, on a tree of links under ``--out`` (``train/``: ``--bank-per-class`` training images per
class, the bank; ``val/``: 2 per class, so that the evaluator holds nothing out of the bank;
``test/``: ``--query-per-class`` test images per class, the queries):

1. **one rule, two paths**: the online evaluator (:class:`~visiontransfer.callbacks.OnlineEvaluation`,
   k = 20, temperature 0.07, in a ``validate`` run of the pretext module) against
   ``visiontransfer.embed`` of bank and queries and :func:`visiontransfer.features.classify` on the
   saved rows: kNN top-1 (and linear-probe top-1) of both, and their difference;
2. **clusters**: k-means (k = 10) of the query embeddings; NMI and purity against the labels, next
   to the same for a random init of the same architecture (embedded the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

import visiontransfer
from visiontransfer import pretext
from visiontransfer.backbones.weights import read_backbone_file
from visiontransfer.callbacks import OnlineEvaluation
from visiontransfer.data import PretrainDataModule
from visiontransfer.data.index import scan_images
from visiontransfer.features import classify, cluster

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
RECIPE = [
    "--model.small_input_stem",
    "false",
    "--model.projection_hidden_dim",
    "256",
    "--model.optimizer",
    "adamw",
    "--model.lr",
    "2e-3",
    "--model.weight_decay",
    "0.05",
    "--model.warmup_epochs",
    "1",
]


def link_tree(data: Path, out: Path, bank_per_class: int, query_per_class: int) -> Path:
    """``out/tree/{train,val,test}/<class>/`` of symbolic links to the first images of each class."""
    tree = out / "tree"
    for split, source, start, count in (
        ("train", "train", 0, bank_per_class),
        ("val", "train", bank_per_class, 2),
        ("test", "test", 0, query_per_class),
    ):
        for klass in sorted(d.name for d in (data / source).iterdir() if d.is_dir()):
            folder = tree / split / klass
            folder.mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(data / source / klass))[start : start + count]:
                if not (folder / name).exists():
                    os.symlink(data / source / klass / name, folder / name)
    return tree


def pretrain(data: Path, out: Path, epochs: int) -> str:
    """SimCLR on 10,000 training images (labels unused) with ``visiontransfer fit``; its last.ckpt."""
    from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir

    files = scan_images(data / "train")
    picks = np.sort(np.random.default_rng(0).permutation(len(files))[:10_000])
    manifest = out / "train_10000.txt"
    manifest.write_text("".join(f"{data / 'train' / files[i]}\n" for i in picks))
    args = [
        "--config",
        str(config_dir() / "pretrain" / "simclr.yaml"),
        "--data.manifest",
        str(manifest),
        *RECIPE,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
    ]
    cli = VisionTransferCLI(args=args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    path = out / "simclr.ckpt"
    cli.trainer.save_checkpoint(path)
    return str(path)


def online_evaluation(checkpoint: str, tree: Path, workers: int) -> dict[str, Any]:
    """The online evaluator's metrics for the checkpoint's module, bank ``train/``, queries ``test/``."""
    spec = read_backbone_file(checkpoint)[0]
    module = getattr(pretext, str(spec.method)).load_from_checkpoint(checkpoint, map_location="cpu")
    evaluator = OnlineEvaluation(
        root=str(tree), image_size=32, batch_size=256, num_workers=workers, k=20, temperature=0.07
    )
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(accelerator="cpu", limit_val_batches=1, callbacks=[evaluator], **quiet)
    data = PretrainDataModule(root=str(tree / "val"), image_size=32, batch_size=16, num_workers=0)
    trainer.validate(module, data, verbose=False)
    return dict(evaluator.history[-1])


def saved(backbone: str, tree: Path, out: Path, workers: int, **kwargs: Any) -> tuple[Any, Any]:
    """Bank and queries embedded with ``visiontransfer.embed``."""
    common = {"image_size": 32, "batch_size": 256, "num_workers": workers, "progress": False, **kwargs}
    bank = visiontransfer.embed(backbone, str(out / "bank"), root=str(tree / "train"), **common)
    queries = visiontransfer.embed(backbone, str(out / "queries"), root=str(tree / "test"), **common)
    return bank, queries


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 with train/ and test/")
    parser.add_argument("--checkpoint", default=None, help="a pretext .ckpt (default: pretrain SimCLR)")
    parser.add_argument("--epochs", type=int, default=4, help="SimCLR epochs without --checkpoint")
    parser.add_argument("--bank-per-class", type=int, default=1000)
    parser.add_argument("--query-per-class", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/features_cifar10"))
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data} (expected train/ and test/ class folders)")
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or pretrain(args.data, args.out, args.epochs)
    tree = link_tree(args.data, args.out, args.bank_per_class, args.query_per_class)
    online = online_evaluation(checkpoint, tree, args.workers)
    bank, queries = saved(checkpoint, tree, args.out / "pretrained", args.workers)
    offline = classify(bank, queries, k=20, temperature=0.07).metrics
    spec = read_backbone_file(checkpoint)[0]
    random_bank, random_queries = saved(
        spec.architecture,
        tree,
        args.out / "random",
        args.workers,
        small_input_stem=spec.small_input_stem,
        seed=0,
    )
    results = {
        "checkpoint": checkpoint,
        "bank": len(bank),
        "queries": len(queries),
        "online": online,
        "saved": offline,
        "knn_top1_difference": offline["knn_top1"] - online["online/knn_top1"],
        "random_init": classify(random_bank, random_queries, k=20, temperature=0.07).metrics,
        "clusters": cluster(queries, args.clusters, out=str(args.out / "pretrained" / "clusters")).summary(),
        "random_clusters": cluster(
            random_queries, args.clusters, out=str(args.out / "random" / "clusters")
        ).summary(),
    }
    print_table(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def print_table(r: dict[str, Any]) -> None:
    online, offline, c, z = r["online"], r["saved"], r["clusters"], r["random_clusters"]
    print(f"\n{r['bank']:,} bank (train) and {r['queries']:,} query (test) images; {r['checkpoint']}")
    print("| | online evaluator | saved embeddings | difference |\n| --- | --- | --- | --- |")
    print(
        f"| kNN top-1 (k=20) | {online['online/knn_top1']:.4f} | {offline['knn_top1']:.4f} "
        f"| {r['knn_top1_difference']:+.4f} |"
    )
    print(
        f"| probe top-1 | {online['online/probe_top1']:.4f} | {offline['probe_top1']:.4f} "
        f"| {offline['probe_top1'] - online['online/probe_top1']:+.4f} |"
    )
    print(f"\nk-means, {c['k']} clusters of the {r['queries']:,} query embeddings:")
    print("| backbone | NMI | purity | kNN top-1 |\n| --- | --- | --- | --- |")
    print(f"| pretrained | {c['nmi']:.4f} | {c['purity']:.4f} | {offline['knn_top1']:.4f} |")
    print(
        f"| random init | {z['nmi']:.4f} | {z['purity']:.4f} | {r['random_init']['knn_top1']:.4f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
