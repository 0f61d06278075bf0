"""Pretrain each pretext method on CIFAR-10 images (labels unused) and compare its features with a
randomly initialised backbone of the same architecture, measured in the same run.

    python benchmarks/pretext_cifar10.py                       # CPU budget: 10k images, 4 epochs
    python benchmarks/pretext_cifar10.py --train-images 50000 --epochs 100 --small-input-stem  # GPU
    python benchmarks/pretext_cifar10.py --methods dino distillation --seeds 0 1 \
        --teacher runs/simclr/version_0/checkpoints/last.ckpt     # mean ± std over seeds

For each method: pretrain with ``visiontransfer.data.PretrainDataModule`` on a manifest of
``--train-images`` files from ``cifar10/train``, then embed a labeled bank (``--bank-per-class``
training images per class) and ``--query`` test images with the module's own ``features()`` and
report kNN top-1 (k=20, cosine, weighted vote) and linear-probe top-1, next to the same numbers
for the untrained model. Prints a Markdown table and writes ``results.json`` and the checkpoints
(for ``visiontransfer report --backbones``) under ``--out``.

MAE pretrains a small ViT (ViT-Tiny, 6 blocks, 4-px patches) whatever ``--backbone`` says, and
distillation a student at most a third of the teacher's size (RegNetX-200MF, 2.3 M parameters, for
a ResNet-18 teacher of 11.2 M) from ``--teacher`` (a checkpoint or export; without one, a SimCLR
teacher is pretrained first at the same budget); its row also gives the teacher's own figures.
Each random init is the same network as the row's. With several ``--seeds`` every figure is a
mean ± standard deviation over them.

``--checkpoints rotation=runs/.../last.ckpt ...`` skips pretraining and evaluates checkpoints made
elsewhere (e.g. ``visiontransfer fit --config configs/pretrain/rotation.yaml``) the same way, each
next to a random init of its own architecture and stem.

Published reference points (ResNet-18 / full budgets): SimCLR kNN ≈ 0.85 after 200 epochs,
RotNet (NIN) probe ≈ 0.89, CPC v2 ≈ 0.845, supervised ≈ 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from visiontransfer import pretext
from visiontransfer.backbones.weights import read_backbone_file
from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.data.datasets import collate_samples
from visiontransfer.data.index import scan_images
from visiontransfer.export import load_backbone
from visiontransfer.pretext.base import PretextModule
from visiontransfer.probes import LinearProbe, knn_predict, topk_accuracy

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"

METHODS: dict[str, tuple[type[PretextModule], dict[str, Any]]] = {
    "rotation": (pretext.RotationPrediction, {"head_hidden_dim": 256, "lr": 2e-3}),
    "colorization": (
        pretext.Colorization,
        {"decoder_width": 64, "decoder_levels": 2, "lr": 2e-3, "prior_batches": 20},
    ),
    "contrastive_patches": (
        pretext.ContrastivePatches,
        {"patch_size": 16, "patch_stride": 8, "prediction_steps": 2, "context_width": 128, "lr": 1e-3},
    ),
    "simclr": (pretext.SimCLR, {"projection_hidden_dim": 256, "lr": 2e-3, "temperature": 0.5}),
    "dino": (
        pretext.DINO,
        {
            "out_dim": 2048,
            "hidden_dim": 1024,
            "bottleneck_dim": 256,
            "local_crops": 2,
            "local_crop_size": 16,
            "global_crop_scale": (0.25, 1.0),
            "local_crop_scale": (0.05, 0.25),
            "blur": False,
            "base_momentum": 0.99,
            "freeze_last_layer_epochs": 0,
            "lr": 2e-3,
            "weight_decay": 0.04,
        },
    ),
    "mae": (
        pretext.MAE,
        {
            "backbone": "vit_tiny_patch16_224",
            "small_input_stem": False,
            "backbone_kwargs": {"img_size": 32, "patch_size": 4, "depth": 6},
            "decoder_width": 128,
            "decoder_depth": 2,
            "lr": 1.5e-3,
        },
    ),
    "distillation": (pretext.Distillation, {"backbone": "regnetx_002", "lr": 2e-3}),  # + the teacher
}
"""Each method's module and its arguments at this budget (a ``backbone`` here overrides ``--backbone``)."""


def build(method: str, backbone: str, small_stem: bool, seed: int, **extra: Any) -> PretextModule:
    """A fresh (untrained) module of ``method``; the same seed gives the same initial weights."""
    cls, kwargs = METHODS[method]
    torch.manual_seed(seed)
    return cls(
        **{"backbone": backbone, "small_input_stem": small_stem, "warmup_epochs": 0.5, **kwargs, **extra}
    )


def from_checkpoint(method: str, path: str, seed: int) -> tuple[PretextModule, PretextModule]:
    """A module of ``method`` holding the checkpoint's backbone, and a random init of the same
    architecture and stem (both seeded alike)."""
    spec = read_backbone_file(path)[0]
    cls, kwargs = METHODS[method]

    def fresh() -> PretextModule:
        torch.manual_seed(seed)
        teacher = {"teacher": "test_resnet", "teacher_pretrained": False} if method == "distillation" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stand-in teacher: only the backbone is evaluated
            return cls(**{
                **kwargs, **teacher, "backbone": spec.architecture, "small_input_stem": spec.small_input_stem,
                "backbone_kwargs": dict(spec.backbone_kwargs) or None,
            })  # fmt: skip

    trained = fresh()
    trained.backbone.load_state_dict(load_backbone(path).state_dict())
    return trained, fresh()


@torch.no_grad()
def embed(model: PretextModule, dataset: Any, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a labeled dataset through ``model.features`` (eval mode)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=2, collate_fn=collate_samples)
    feats, labels = [], []
    for batch in loader:
        feats.append(model.features(batch["image"]).float())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def evaluate(model: PretextModule, bank: Any, query: Any, num_classes: int) -> dict[str, float]:
    """kNN and linear-probe top-1 of the model's features."""
    bank_x, bank_y = embed(model, bank)
    query_x, query_y = embed(model, query)
    scores = knn_predict(query_x, bank_x, bank_y, num_classes, k=20, temperature=0.07)
    probe = LinearProbe(epochs=200, lr=1e-2, weight_decay=1e-4, batch_size=None)
    probe.fit(bank_x, bank_y, num_classes)
    return {
        "knn_top1": topk_accuracy(scores, query_y, 1),
        "probe_top1": topk_accuracy(probe.predict(query_x), query_y, 1),
    }


def eval_sets(data: Path, bank_per_class: int, query: int, image_size: int) -> tuple[Any, Any, int]:
    """The labeled bank (training images) and query (test images) sets."""
    dm = ClassificationDataModule(
        root=str(data), samples_per_class=bank_per_class, image_size=image_size, augment="none", num_workers=0
    )
    dm.setup("fit")
    test = dm.datasets["test"]
    picks = np.random.default_rng(0).permutation(len(test))[:query]
    return dm.datasets["train"], torch.utils.data.Subset(test, picks.tolist()), dm.num_classes


def pretrain(
    model: PretextModule, manifest: Path, args: argparse.Namespace, out: Path, method: str, seed: int
) -> Path:
    L.seed_everything(seed)
    data = PretrainDataModule(
        manifest=str(manifest), image_size=32, batch_size=args.batch_size, val_fraction=0.02,
        num_workers=args.workers, seed=seed,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="auto", devices=1, precision=args.precision,
        logger=L.pytorch.loggers.CSVLogger(out, name=method), enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=20, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(model, data)
    path = out / (f"{method}.ckpt" if seed == args.seeds[0] else f"{method}_seed{seed}.ckpt")
    trainer.save_checkpoint(path)
    return path


def write_manifest(data: Path, count: int, seed: int, out: Path) -> Path:
    """A manifest of ``count`` random CIFAR-10 training images (labels are not used)."""
    files = scan_images(data / "train")
    picks = np.random.default_rng(seed).permutation(len(files))[:count]
    manifest = out / f"train_{count}.txt"
    manifest.write_text("\n".join(str(data / "train" / files[i]) for i in sorted(picks)) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 folder with train/ and test/"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-input-stem", action="store_true", help="CIFAR stem (16x the compute)")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bank-per-class", type=int, default=500)
    parser.add_argument("--query", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="mean ± std over these seeds")
    parser.add_argument(
        "--teacher", help="distillation teacher: a .ckpt or export (default: pretrain SimCLR)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench_pretext"))
    parser.add_argument(
        "--checkpoints", nargs="+", type=_checkpoint_arg, metavar="METHOD=PATH",
        help="evaluate these pretext checkpoints instead of pretraining",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.checkpoints = dict(args.checkpoints or [])
    if not (args.data / "train").is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data} (expected train/ and test/ class folders)")
    args.out.mkdir(parents=True, exist_ok=True)
    bank, query, num_classes = eval_sets(args.data, args.bank_per_class, args.query, 32)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "methods": {}}
    for method, path in (args.checkpoints or {}).items():
        trained, random = from_checkpoint(method, path, args.seeds[0])
        results["methods"][method] = {
            "random": evaluate(random, bank, query, num_classes),
            "pretrained": evaluate(trained, bank, query, num_classes),
            "seconds": None,
            "checkpoint": path,
        }
    for method in [] if args.checkpoints else args.methods:
        extra = {}
        if method == "distillation":
            extra = {"teacher": args.teacher or teacher_checkpoint(args, results, (bank, query, num_classes))}
        runs = [pretrain_and_evaluate(method, args, (bank, query, num_classes), s, extra) for s in args.seeds]
        results["methods"][method] = summarise(runs, args.seeds)
        if method == "distillation":
            teacher, _ = from_checkpoint("simclr", extra["teacher"], args.seeds[0])
            results["methods"][method]["teacher"] = evaluate(teacher, bank, query, num_classes)
            results["methods"][method]["teacher_checkpoint"] = extra["teacher"]
    print_table(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def teacher_checkpoint(args: argparse.Namespace, results: dict[str, Any], sets: tuple[Any, Any, int]) -> str:
    """The distillation teacher when none is given: this run's SimCLR checkpoint, else one
    pretrained now at the same budget."""
    if "simclr" in results["methods"]:
        return str(results["methods"]["simclr"]["checkpoint"])
    model = build("simclr", args.backbone, args.small_input_stem, args.seeds[0])
    manifest = write_manifest(args.data, args.train_images, args.seeds[0], args.out)
    return str(pretrain(model, manifest, args, args.out, "simclr_teacher", args.seeds[0]))


def pretrain_and_evaluate(
    method: str, args: argparse.Namespace, sets: tuple[Any, Any, int], seed: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Random-init figures, pretraining, then the pretrained figures of one method and seed."""
    L.seed_everything(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random_scores = evaluate(build(method, args.backbone, args.small_input_stem, seed, **extra), *sets)
    model = build(method, args.backbone, args.small_input_stem, seed, **extra)
    manifest = write_manifest(args.data, args.train_images, seed, args.out)
    start = time.perf_counter()
    ckpt = pretrain(model, manifest, args, args.out, method, seed)
    seconds = time.perf_counter() - start
    trained_scores = evaluate(model, *sets)
    print(
        f"{method} seed {seed}: pretrained {trained_scores} random {random_scores} ({seconds:.0f} s)",
        flush=True,
    )
    return {
        "random": random_scores,
        "pretrained": trained_scores,
        "seconds": seconds,
        "checkpoint": str(ckpt),
    }


def summarise(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean (``pretrained``, ``random``, ``seconds``) and standard deviation (``*_std``) over seeds,
    with each seed's figures under ``seeds``."""
    out: dict[str, Any] = {"seeds": dict(zip(map(str, seeds), runs, strict=True))}
    for kind in ("pretrained", "random"):
        values = {k: [r[kind][k] for r in runs] for k in runs[0][kind]}
        out[kind] = {k: float(np.mean(v)) for k, v in values.items()}
        out[f"{kind}_std"] = {k: float(np.std(v)) for k, v in values.items()}
    out["seconds"] = float(np.mean([r["seconds"] for r in runs]))
    out["checkpoint"] = runs[0]["checkpoint"]
    return out


def _checkpoint_arg(text: str) -> tuple[str, str]:
    method, _, path = text.partition("=")
    if method not in METHODS or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give METHOD=PATH with METHOD one of {', '.join(METHODS)}"
        )
    return method, path


def print_table(results: dict[str, Any]) -> None:
    rows = [
        "| method | kNN top-1 pretrained | kNN top-1 random init | probe top-1 pretrained "
        "| probe top-1 random init | pretrain time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, r in results["methods"].items():

        def cell(kind: str, metric: str, r: dict[str, Any] = r) -> str:
            std = r.get(f"{kind}_std")
            spread = f" ± {std[metric]:.3f}" if std is not None and len(r.get("seeds", {})) > 1 else ""
            return f"{r[kind][metric]:.3f}{spread}"

        took = "-" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        rows.append(
            f"| {method} | {cell('pretrained', 'knn_top1')} | {cell('random', 'knn_top1')} | "
            f"{cell('pretrained', 'probe_top1')} | {cell('random', 'probe_top1')} | {took} |"
        )
        if "teacher" in r:
            t = r["teacher"]
            rows.append(f"| (its teacher) | {t['knn_top1']:.3f} | | {t['probe_top1']:.3f} | | |")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
