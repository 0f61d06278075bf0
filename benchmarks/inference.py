"""Inference speed of an exported classifier: its ONNX graph in onnxruntime against the PyTorch
model, on the same CPU, in the same run.

    python benchmarks/inference.py --backbone resnet18 --image-size 224 --batch-sizes 1 32 --repeats 5

The model is a fine-tuned ``--checkpoint`` (any ``ImageClassifier`` .ckpt), or an
``ImageClassifier`` of ``--backbone`` built here (speed does not depend on the weights). It is
exported with ``visiontransfer.export(..., format="onnx")`` (checked against PyTorch on real images
before it is kept). Then, for each batch size, real CIFAR-10 test images resized to the image size
(uint8, as the datamodules give them) go through

(a) **PyTorch**: the model's ``inference_model()`` (eager, ``torch.inference_mode``), and
(b) **onnxruntime**: ``model.onnx`` on the CPU execution provider,

both with ``--threads`` threads (default: every core). Each figure is images/s over ``--steps``
calls after ``--warmup`` untimed ones, the median of ``--repeats`` such runs; the table gives b/a.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import visiontransfer
from visiontransfer.backbones.weights import CHECKPOINT_KEY
from visiontransfer.data.decode import load_rgb
from visiontransfer.data.index import scan_images
from visiontransfer.data.transforms import eval_transform
from visiontransfer.deploy.runtime import OnnxModel
from visiontransfer.transfer import ImageClassifier

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "test"


def build_checkpoint(backbone: str, image_size: int, folder: Path) -> Path:
    """A checkpoint of a fresh 10-class ``ImageClassifier`` (what ``visiontransfer fit`` writes,
    without the optimizer state)."""
    torch.manual_seed(0)
    model = ImageClassifier(
        num_classes=10, backbone=backbone, small_input_stem=image_size <= 64, input_size=image_size
    )
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        CHECKPOINT_KEY: model.checkpoint_spec().to_dict(),
    }
    path = folder / "model.ckpt"
    torch.save(checkpoint, path)
    return path


def real_images(data: Path, count: int, image_size: int) -> torch.Tensor:
    """``(count, 3, S, S)`` uint8: real images resized and centre-cropped as for evaluation
    (repeated when the folder holds fewer)."""
    names = scan_images(data)
    files = [os.path.join(data, name) for name in names[:: max(1, len(names) // count)]]
    crop = eval_transform(image_size)
    arrays = [crop(image=load_rgb(f))["image"] for f in files[:count]]
    while len(arrays) < count:
        arrays += arrays[: count - len(arrays)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def images_per_second(
    run: Callable[[torch.Tensor], object], batch: torch.Tensor, args: argparse.Namespace
) -> float:
    """Median images/s of ``run(batch)`` over ``args.repeats`` runs of ``args.steps`` calls."""
    for _ in range(args.warmup):
        run(batch)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            run(batch)
        rates.append(args.steps * batch.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", help="an ImageClassifier .ckpt (default: a fresh model of --backbone)"
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is shown)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of both runtimes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real images to time on")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else build_checkpoint(
            args.backbone, args.image_size, Path(tmp)
        )  # fmt: skip
        out = visiontransfer.export(
            checkpoint, Path(tmp) / "export", "onnx", images=str(args.data), onnx_exporter=args.exporter
        )
        network = visiontransfer.load_model(str(out), format="safetensors")
        onnx_model = OnnxModel(out / "model.onnx", threads=args.threads)
        size = int(json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"][-1])
        print(f"model: {args.checkpoint or args.backbone} at {size} px; threads {args.threads}; "
              f"torch {torch.__version__}, onnxruntime {onnx_model.session.get_providers()[0]}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
        head = "| batch | PyTorch images/s (a) | onnxruntime images/s (b) | ratio b/a |"
        print(f"\n{head}\n| --- | --- | --- | --- |")
        for batch_size in args.batch_sizes:
            batch = real_images(args.data, batch_size, size)
            with torch.inference_mode():
                a = images_per_second(network, batch, args)
            b = images_per_second(onnx_model, batch, args)
            print(f"| {batch_size} | {a:.1f} | {b:.1f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
