"""The Python half of ``benchmarks/gpu_check.sh``: packing the data, the steps that are not
``benchmarks/throughput.py`` or the CLI, and the results file.

    python benchmarks/gpu_check.py pack SRC[:SRC...] DST [--images 4000] [--max-mib 48]
    python benchmarks/gpu_check.py environment --out FILE [--require-cuda]
    python benchmarks/gpu_check.py decode DATA --out FILE [--device cuda] [--workers 16]
    python benchmarks/gpu_check.py losses DATA --out FILE --work DIR [--accelerator gpu] ...
    python benchmarks/gpu_check.py fit-summary LOG_DIR --out FILE
    python benchmarks/gpu_check.py record RESULTS NAME --status ok ...

``pack`` puts up to ``--images`` JPEGs of one or more folders (``:``-separated, taken in turn so
each contributes) into tar shards (``visiontransfer shard``'s layout, 1 % in ``val-*``) of at most
``--max-mib`` MiB together, small enough to travel with the code to a GPU machine. ``record``
merges one step's outcome into the results JSON (rewritten atomically, with a text rendering
beside it), so a kill at any point leaves every finished step. ``record`` and ``fit-summary``
import nothing heavy.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TAR_BLOCK = 512
TAR_RECORD = 10240
"""Tar pads each member to 512-byte blocks and each archive to a 10 KiB record."""


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically. Not ``visiontransfer.checkpoint_io.atomic_write``: this file's
    ``record`` step must work where the package (and torch) cannot be imported, to record why."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".partial")
    temp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(temp, path)


# --- pack -------------------------------------------------------------------------------------


def _tar_bytes(size: int) -> int:
    return TAR_BLOCK + math.ceil(size / TAR_BLOCK) * TAR_BLOCK


def choose_files(sources: list[str], images: int, max_bytes: int, seed: int = 0) -> list[Path]:
    """Up to ``images`` JPEGs taken in turn from each source (each shuffled with ``seed``) while
    their tar members fit in ``max_bytes``."""
    import numpy as np

    from visiontransfer.data.index import scan_images

    pools = []
    for source in sources:
        files = [Path(source, rel) for rel in scan_images(source)]
        files = [f for f in files if f.suffix.lower() in (".jpg", ".jpeg")]
        if not files:
            raise SystemExit(f"pack: no JPEG files in {source}")
        order = np.random.default_rng(seed).permutation(len(files))
        pools.append([files[i] for i in order])
    chosen: list[Path] = []
    total = 2 * TAR_RECORD  # the train and val archives' padding, at least
    position = [0] * len(pools)
    while len(chosen) < images and any(p < len(pool) for p, pool in zip(position, pools, strict=True)):
        for k, pool in enumerate(pools):
            if position[k] >= len(pool) or len(chosen) >= images:
                continue
            file = pool[position[k]]
            position[k] += 1
            size = _tar_bytes(file.stat().st_size)
            if total + size > max_bytes:
                position[k] = len(pool)  # this source's next file may be as large: stop it
                continue
            chosen.append(file)
            total += size
    return chosen


def pack(options: argparse.Namespace) -> None:
    from visiontransfer.data.shards import write_shards

    sources = [s for s in options.source.split(":") if s]
    chosen = choose_files(sources, options.images, int(options.max_mib * 2**20) - options.shards * TAR_RECORD)
    if len(chosen) < 16:
        raise SystemExit(f"pack: only {len(chosen)} JPEGs chosen from {sources}: need at least 16")
    train = len(chosen) - int(len(chosen) * options.val_fraction)
    shard_size = max(1, math.ceil(train / options.shards))
    import numpy as np

    mixed = [chosen[i] for i in np.random.default_rng(1).permutation(len(chosen))]  # sources mixed in shards
    with tempfile.TemporaryDirectory() as farm:  # links named in order; the shards hold the bytes
        for i, file in enumerate(mixed):
            os.symlink(file.resolve(), Path(farm, f"{i:06d}{file.suffix.lower()}"))
        index = write_shards(farm, options.dest, shard_size, val_fraction=options.val_fraction)
    summary = json.loads(index.read_text())
    size = sum(p.stat().st_size for p in Path(options.dest).glob("*.tar"))
    per_source = {s: sum(1 for f in chosen if str(f).startswith(str(Path(s)))) for s in sources}
    print(
        f"packed {summary['samples']} + {summary['val_samples']} val JPEGs into {len(summary['shards'])} + "
        f"{len(summary['val_shards'])} shards, {size / 2**20:.1f} MiB, under {options.dest}: {per_source}"
    )


# --- reading JPEG bytes -----------------------------------------------------------------------


def read_payloads(data: Path, limit: int) -> list[tuple[str, bytes]]:
    """``(where, bytes)`` of up to ``limit`` JPEGs of a shard folder or an image folder."""
    from visiontransfer.data.shards import INDEX, _tar_samples, read_index

    found: list[tuple[str, bytes]] = []
    if (data / INDEX).is_file():
        index = read_index(str(data))
        for shard in [*index["shards"], *index.get("val_shards", [])]:
            for key, payload, _ in _tar_samples(data / shard["name"]):
                if payload is not None and payload.startswith(b"\xff\xd8\xff"):
                    found.append((f"{shard['name']}:{key}", payload))
                if len(found) >= limit:
                    return found
        return found
    from visiontransfer.data.index import scan_images

    for rel in scan_images(data):
        path = data / rel
        if path.suffix.lower() in (".jpg", ".jpeg"):
            found.append((str(path), path.read_bytes()))
            if len(found) >= limit:
                break
    return found


# --- environment ------------------------------------------------------------------------------


NEEDED = ("torch", "torchvision", "lightning", "timm", "albumentations", "jsonargparse", "omegaconf")
"""Distributions the steps cannot run without."""


def environment(options: argparse.Namespace) -> None:
    import platform
    from importlib import metadata

    import torch

    versions = {}
    for name in (*NEEDED, "torchcodec"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:  # what the steps import
        import visiontransfer.commands.lightning_cli
        import visiontransfer.data
        import visiontransfer.pretext  # noqa: F401

        problem = None
    except Exception as error:
        problem = f"import visiontransfer failed: {type(error).__name__}: {error}"
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "packages": versions,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(
            gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=props.total_memory / 2**30,
            bf16_supported=torch.cuda.is_bf16_supported(), multiprocessors=props.multi_processor_count,
        )  # fmt: skip
    missing = [name for name in NEEDED if versions[name] is None]
    if missing:
        problem = f"missing packages: {', '.join(missing)}"
    if options.require_cuda and not torch.cuda.is_available():
        problem = "no CUDA device: torch.cuda.is_available() is False"
    if problem is not None:
        result["problem"] = problem
    write_json(Path(options.out), result)
    print(json.dumps(result, indent=1))
    if problem is not None:
        raise SystemExit(problem)


# --- decode -----------------------------------------------------------------------------------

_PAYLOADS: list[bytes] = []


def _decode_range(span: tuple[int, int]) -> int:
    """Decode payloads ``span`` with the CPU workers' decoder (Pillow, as the data pipeline); pixels."""
    from visiontransfer.data.decode import decode_rgb

    pixels = 0
    for i in range(*span):
        image = decode_rgb(io.BytesIO(_PAYLOADS[i]), str(i))
        pixels += image.shape[0] * image.shape[1]
    return pixels


def _rate(run: Callable[[], Any], images: int, repeats: int, sync: Callable[[], None]) -> float:
    """Images/s: median over ``repeats`` timed runs after one untimed run."""
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def decode(options: argparse.Namespace) -> None:
    """Batched JPEG decode on the device (what ``--data.decode_on_device`` calls) against the CPU
    workers' decoder in ``--workers`` processes and in one."""
    import multiprocessing

    import torch

    from visiontransfer.data.device_decode import _jpeg

    global _PAYLOADS
    items = read_payloads(Path(options.data), options.images)
    if not items:
        raise SystemExit(f"decode: no JPEG in {options.data}")
    _PAYLOADS = [payload for _, payload in items]
    device = torch.device(options.device)
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in _PAYLOADS]
    batches = [tensors[i : i + options.batch_size] for i in range(0, len(tensors), options.batch_size)]
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401

        decoder = "torchcodec"
    except (ImportError, RuntimeError, OSError):
        decoder = "torchvision"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def on_device() -> None:
        for batch in batches:
            _jpeg(batch, device)

    n = len(_PAYLOADS)
    device_rate = _rate(on_device, n, options.repeats, sync)
    spans = [(i, min(n, i + options.chunk)) for i in range(0, n, options.chunk)]
    with multiprocessing.get_context("fork").Pool(options.workers) as pool:
        pixels = sum(pool.map(_decode_range, spans))  # warm: every worker imported the decoder
        workers_rate = _rate(lambda: pool.map(_decode_range, spans), n, options.repeats, lambda: None)
    one_rate = _rate(lambda: _decode_range((0, n)), n, 1, lambda: None)
    result = {
        "images": n, "mean_megapixels": pixels / n / 1e6, "megabytes": sum(map(len, _PAYLOADS)) / 1e6,
        "device": str(device), "device_decoder": decoder, "batch_size": options.batch_size,
        "device_images_per_s": device_rate, "cpu_workers": options.workers,
        "cpu_workers_images_per_s": workers_rate, "cpu_one_process_images_per_s": one_rate,
        "device_over_cpu_workers": device_rate / workers_rate,
        "device_megapixels_per_s": device_rate * pixels / n / 1e6,
        "cpu_workers_megapixels_per_s": workers_rate * pixels / n / 1e6,
    }  # fmt: skip
    write_json(Path(options.out), result)
    print(json.dumps(result, indent=1))


# --- losses -----------------------------------------------------------------------------------


def read_metrics(log_dir: Path, column: str) -> dict[int, float]:
    """``{step: value}`` of ``column`` in the newest ``metrics.csv`` below ``log_dir``."""
    files = sorted(log_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no metrics.csv below {log_dir}")
    values: dict[int, float] = {}
    with files[-1].open() as handle:
        for row in csv.DictReader(handle):
            if row.get(column) not in (None, ""):
                values[int(row["step"])] = float(row[column])
    return values


def _cli_fit(args: list[str]) -> None:
    """``visiontransfer fit ARGS`` in this process (one import for both runs)."""
    from visiontransfer.cli import main

    try:
        main(["fit", *args])
    except SystemExit as error:
        if error.code not in (None, 0):
            raise RuntimeError(f"visiontransfer fit {' '.join(args)} exited with {error.code}") from None


def losses(options: argparse.Namespace) -> None:
    """The same seeded short RotNet run on ``--accelerator`` and on the CPU, both in fp32 (TF32
    off): the logged training losses, step by step, must agree within ``--rtol``."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on the GPU too
    torch.backends.cudnn.allow_tf32 = False
    data = Path(options.data)
    source = "--data.shards" if (data / "index.json").is_file() else "--data.root"
    work = Path(options.work)
    curves = {}
    for accelerator in (options.accelerator, "cpu"):
        name = f"losses_{accelerator}"
        _cli_fit([
            "--config", str(REPO / "configs/pretrain/rotation.yaml"), source, str(data),
            "--trainer.callbacks=[]", "--trainer.enable_checkpointing", "false",
            "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
            "--trainer.default_root_dir", str(work / name), "--trainer.accelerator", accelerator,
            "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
            "--trainer.max_steps", str(options.steps), "--trainer.log_every_n_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--seed_everything", "0",
            "--model.init_args.backbone", options.backbone, "--model.init_args.lr", str(options.lr),
            "--data.init_args.image_size", str(options.image_size),
            "--data.init_args.batch_size", str(options.batch_size),
            "--data.init_args.num_workers", str(options.workers),
        ])  # fmt: skip
        curves[accelerator] = read_metrics(work / name, "train/loss")
    device, cpu = curves[options.accelerator], curves["cpu"]
    steps = sorted(set(device) & set(cpu))
    if not steps:
        raise SystemExit(f"no common logged steps: {sorted(device)} vs {sorted(cpu)}")
    diffs = [abs(device[s] - cpu[s]) / max(abs(cpu[s]), 1e-12) for s in steps]
    result = {
        "accelerator": options.accelerator, "steps_compared": len(steps), "backbone": options.backbone,
        "image_size": options.image_size, "batch_size": options.batch_size, "rtol": options.rtol,
        "max_rel_diff": max(diffs), "mean_rel_diff": statistics.fmean(diffs),
        "first_rel_diff": diffs[0], "last_rel_diff": diffs[-1], "agree": max(diffs) <= options.rtol,
        "device_losses": [device[s] for s in steps], "cpu_losses": [cpu[s] for s in steps],
    }  # fmt: skip
    write_json(Path(options.out), result)
    print(json.dumps(result, indent=1))


# --- fit summary ------------------------------------------------------------------------------


def fit_summary(options: argparse.Namespace) -> None:
    """Steps, epochs and the first and last training loss of the run logged below ``LOG_DIR``."""
    root = Path(options.log_dir)
    files = sorted(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no metrics.csv below {root}: the fit logged nothing")
    with files[-1].open() as handle:
        rows = list(csv.DictReader(handle))
    loss = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    if not loss:
        raise SystemExit(f"{files[-1]} has no train/loss")
    epochs = [int(r["epoch"]) for r in rows if r.get("epoch")]
    checkpoints = sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt"))
    result = {
        "logged_steps": len(loss), "last_step": loss[-1][0], "epochs": max(epochs) + 1 if epochs else 0,
        "first_loss": loss[0][1], "last_loss": loss[-1][1], "val_loss": val[-1] if val else None,
        "loss_finite": all(math.isfinite(v) for _, v in loss), "checkpoints": checkpoints,
    }  # fmt: skip
    for key, value in json.loads(options.extra or "{}").items():
        result[key] = value
    write_json(Path(options.out), result)
    print(json.dumps(result, indent=1))


# --- record -----------------------------------------------------------------------------------


def _log_tail(path: str | None, lines: int = 30, chars: int = 4000) -> str:
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])[-chars:]


def record(options: argparse.Namespace) -> None:
    """Merge one step's outcome into RESULTS (and its text rendering beside it)."""
    results_path = Path(options.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"steps": {}}
    if options.meta:
        results.update(json.loads(options.meta))
    if options.name:
        step: dict[str, Any] = {"status": options.status}
        for key in ("seconds", "limit_s", "rc"):
            value = getattr(options, key)
            if value is not None:
                step[key] = value
        if options.substituted:
            step["substituted"] = options.substituted
        if options.note:
            step["note"] = options.note
        if options.command:
            step["command"] = options.command
        if options.result and Path(options.result).is_file():
            try:
                step["result"] = json.loads(Path(options.result).read_text())
            except json.JSONDecodeError as error:
                step["result_unreadable"] = str(error)
        if options.status in ("error", "timeout"):
            tail = _log_tail(options.log)
            last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
            problem = step.get("result", {}).get("problem") if isinstance(step.get("result"), dict) else None
            if options.error:
                step["error"] = options.error
            elif options.status == "timeout":
                step["error"] = f"ran past its {options.limit_s:.0f} s"
            else:
                step["error"] = f"exit status {options.rc}: {problem or last}"
            step["log_tail"] = tail
        results["steps"][options.name] = step
    results["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["summary"] = summarize(results["steps"])
    write_json(results_path, results)
    text = render(results)
    temp = results_path.with_suffix(".txt.partial")
    temp.write_text(text)
    os.replace(temp, results_path.with_suffix(".txt"))
    if options.print:
        print(text)


GOAL = 0.9
"""Full pipeline over model-only ceiling that the data path should reach."""


def summarize(steps: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of the finished steps, and the count of each status."""
    summary: dict[str, Any] = {"statuses": {}}
    for name, step in steps.items():
        summary["statuses"][step["status"]] = summary["statuses"].get(step["status"], 0) + 1
        result = step.get("result") or {}
        if step["status"] != "ok":
            continue
        if name.startswith("throughput_"):
            for method, row in result.get("methods", {}).items():
                if "ceiling" not in row:
                    continue
                entry = {k: row[k] for k in ("ceiling", "pipeline_ratio", "device_decode_ratio") if k in row}
                ratios = [v for k, v in entry.items() if k.endswith("_ratio")]
                entry["best_ratio_meets_goal"] = bool(ratios) and max(ratios) >= GOAL
                summary.setdefault("full_over_ceiling", {"goal": GOAL})[method] = entry
        elif name == "jpeg_decode":
            summary["jpeg_decode_device_over_cpu_workers"] = result.get("device_over_cpu_workers")
        elif name == "loss_agreement":
            summary["loss_max_rel_diff"] = result.get("max_rel_diff")
            summary["losses_agree"] = result.get("agree")
        elif name.startswith("fsdp_"):
            summary[f"{name}_last_loss"] = result.get("last_loss")
        elif name == "compile":
            row = result.get("methods", {}).get("rotation", {})
            summary["compiled_over_eager"] = row.get("compiled_ratio")
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _flat(result: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(result, dict):
        for key, value in result.items():
            yield from _flat(value, f"{prefix}{key}.")
    elif isinstance(result, list) and len(result) > 6:
        yield prefix[:-1], f"[{len(result)} values]"
    else:
        yield prefix[:-1], result


def render(results: dict[str, Any]) -> str:
    """The results file as text: the headline figures, then every step."""
    lines = ["GPU check of visiontransfer", ""]
    for key in ("mode", "started", "updated", "finished", "device", "data", "setting", "total_seconds"):
        if key in results:
            lines.append(f"{key}: {_fmt(results[key])}")
    lines.append("")
    for key, value in _flat(results.get("summary", {})):
        lines.append(f"summary {key}: {_fmt(value)}")
    lines.append("")
    for name, step in results.get("steps", {}).items():
        seconds = f", {step['seconds']:.0f} s" if isinstance(step.get("seconds"), int | float) else ""
        lines.append(f"== {name}: {step['status']}{seconds}")
        if step.get("substituted"):
            lines.append(f"   substituted: {step['substituted']}")
        if step.get("note"):
            lines.append(f"   note: {step['note']}")
        for key, value in _flat(step.get("result", {})):
            if key != "settings" and not key.startswith("settings."):
                lines.append(f"   {key}: {_fmt(value)}")
        if step.get("error"):
            lines.append(f"   error: {step['error']}")
            lines.extend("   | " + line for line in step.get("log_tail", "").splitlines()[-12:])
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pack", help="pack JPEGs of one or more folders into tar shards")
    p.add_argument("source", help="image folder(s), ':'-separated")
    p.add_argument("dest", help="output folder of the shards")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--max-mib", type=float, default=48.0, help="size of all shards together")
    p.add_argument("--shards", type=int, default=16, help="training shards (one per CPU worker)")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.set_defaults(run=pack)

    p = commands.add_parser("environment", help="python, torch, CUDA, GPU")
    p.add_argument("--out", required=True)
    p.add_argument("--require-cuda", action="store_true")
    p.set_defaults(run=environment)

    p = commands.add_parser("decode", help="batched JPEG decode on the device against CPU workers")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk", type=int, default=32, help="images per task of the CPU workers")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(run=decode)

    p = commands.add_parser("losses", help="short seeded RotNet run on the device and on the CPU")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.set_defaults(run=losses)

    p = commands.add_parser("fit-summary", help="steps and losses of a logged fit")
    p.add_argument("log_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--extra", help="JSON object merged into the result")
    p.set_defaults(run=fit_summary)

    p = commands.add_parser("record", help="merge a step's outcome into the results file")
    p.add_argument("results")
    p.add_argument("name", nargs="?")
    p.add_argument("--status", default="ok", choices=["ok", "error", "timeout", "skipped", "running"])
    p.add_argument("--seconds", type=float)
    p.add_argument("--limit-s", type=float)
    p.add_argument("--rc", type=int)
    p.add_argument("--result", help="the step's JSON result file")
    p.add_argument("--log", help="the step's log (its tail is kept on failure)")
    p.add_argument("--error")
    p.add_argument("--substituted")
    p.add_argument("--note")
    p.add_argument("--command")
    p.add_argument("--meta", help="JSON object merged into the top level")
    p.add_argument("--print", action="store_true", help="print the text rendering")
    p.set_defaults(run=record)

    options = parser.parse_args(argv)
    options.run(options)


if __name__ == "__main__":
    main()
