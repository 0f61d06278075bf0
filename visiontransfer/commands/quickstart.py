"""``visiontransfer quickstart``: pretrain → transfer → compare with training from scratch, on the
embedded procedural image set, in a few minutes on a laptop CPU. Each step is an ordinary
``visiontransfer fit`` run of a config in ``configs/``; the commands are printed as they run."""

from __future__ import annotations

import argparse
from pathlib import Path

from visiontransfer.commands.lightning_cli import config_dir, fit_then_test

PRETRAIN = "pretrain/rotation_quickstart.yaml"
TRANSFER = "transfer/quickstart_finetune.yaml"


def _fit(config: Path, overrides: list[str]) -> tuple[str, dict[str, float]]:
    """Run ``visiontransfer fit`` (then test) and return the checkpoint and the final metrics."""
    print(f"\n$ visiontransfer fit --config {config} {' '.join(overrides)}", flush=True)
    cli, tested = fit_then_test(["--config", str(config), *overrides], validate_without_test=False)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(tested)
    callback = cli.trainer.checkpoint_callback
    ckpt = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return ckpt, metrics


def main(argv: list[str]) -> dict[str, float]:
    """Entry point; returns the test top-1 of the pretrained and the scratch model."""
    parser = argparse.ArgumentParser(prog="visiontransfer quickstart", description=__doc__)
    parser.add_argument("--backbone", default=None, help="timm model name (default: the configs' resnet10t)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the pretext config's")
    parser.add_argument("--transfer-epochs", type=int, default=None, help="default: the transfer config's")
    parser.add_argument("--images", type=int, default=None, help="pretraining images of the embedded set")
    parser.add_argument("--labels-per-class", type=int, default=20)
    parser.add_argument("--fast", action="store_true", help="tiny budget, to check the pipeline (seconds)")
    options = parser.parse_args(argv)
    common = [f"--model.backbone={options.backbone}"] if options.backbone else []
    pretrain = list(common)
    transfer = [f"--data.samples_per_class={options.labels_per_class}"]
    if options.pretrain_epochs is not None:
        pretrain.append(f"--trainer.max_epochs={options.pretrain_epochs}")
    if options.transfer_epochs is not None:
        transfer.append(f"--trainer.max_epochs={options.transfer_epochs}")
    if options.images is not None:
        pretrain.append(f"--data.synthetic_size={options.images}")
    if options.fast:
        fast = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.max_epochs=1"]
        pretrain += [*fast, "--trainer.callbacks=[]"]
        transfer += [*fast, "--trainer.limit_test_batches=1"]
    print(
        "visiontransfer quickstart: RotNet pretraining on the embedded image set, then fine-tuning on "
        f"{options.labels_per_class} labels per class, from the pretrained backbone and from scratch."
    )
    ckpt, pre_metrics = _fit(config_dir() / PRETRAIN, pretrain)
    _, ours = _fit(config_dir() / TRANSFER, [f"--model.backbone={ckpt}", *transfer])
    scratch_name = options.backbone or "resnet10t"
    _, scratch = _fit(config_dir() / TRANSFER, [f"--model.backbone={scratch_name}", *transfer])
    result = {
        "pretrained": ours.get("test/top1", float("nan")),
        "scratch": scratch.get("test/top1", float("nan")),
    }
    knn = pre_metrics.get("online/knn_top1")
    print("\n" + "=" * 78)
    print(f"pretext checkpoint: {ckpt}")
    if knn is not None:
        print(f"kNN top-1 of the pretrained features on the embedded labels: {knn:.3f}")
    print(
        f"test top-1 with {options.labels_per_class} labels/class: pretrained {result['pretrained']:.3f} "
        f"vs from scratch {result['scratch']:.3f} ({result['pretrained'] - result['scratch']:+.3f})"
    )
    print("logs and checkpoints: runs/quickstart_rotation, runs/quickstart_transfer")
    print("=" * 78)
    return result
