"""What ``visiontransfer embed`` costs beyond the network, and what searching a million rows takes.

    python benchmarks/embed.py                       # all three parts, CPU-sized defaults
    python benchmarks/embed.py --parts throughput --backbone resnet50 --image-size 224 --accelerator gpu

1. **throughput**: ``--images`` real CIFAR-10 files decoded and centre-cropped once into memory;
   then, in the same run and alternating, (a) a plain ``timm`` forward loop over those batches
   (normalise, ``model(x)``, under ``inference_mode``) and (b) ``visiontransfer.embed`` over the same
   decoded images (a map-style ``dataset``: Lightning ``predict``, the writer, chunk files, the
   merge, the final load: everything but the JPEG decoding). Images/s of both, medians of
   ``--repeats``, and the ratio b / a (1.0: the bookkeeping is free).
2. **memory**: ``embed`` of ``--rows`` synthetic rows (8-px images, ``test_resnet``) in chunks of
   ``--chunk-size``, each count in a fresh process, which samples its resident memory: the peak
   above the resident memory before the call, and where it came from (embedding and merging the
   chunks, then loading the 1M-row ``index.csv`` back). Flat means the same peak for every count.
3. **faiss**: ``--vectors`` random clustered ``--dim``-d unit vectors; build time of the exact and
   the approximate (IVF) index of :mod:`visiontransfer.features.search`, query latency (one query
   at a time, and per query in batches of 1,000), and the IVF's recall of the exact 10 neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "train"


# -- 1. throughput ----------------------------------------------------------------------------------
class Decoded(Dataset[dict[str, Any]]):
    """Samples of images already decoded and cropped: ``(N, 3, S, S) uint8``."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": -1, "index": index}


def decode_images(data: Path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` images of ``data`` (sorted), decoded and centre-cropped to ``size``."""
    from visiontransfer.data.index import scan_images
    from visiontransfer.features.figures import thumbnails

    files = [str(data / f) for f in scan_images(data)[:count]]
    if len(files) < count:
        sys.exit(f"only {len(files)} images under {data}; need --images {count}")
    return thumbnails(files, size=size)


def plain_loop(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: str) -> float:
    """Seconds of a bare timm forward pass over ``images`` in batches (the baseline)."""
    from visiontransfer.backbones import normalization

    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in normalization(model, 3))
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in images.split(batch_size):
            x = batch.to(device, non_blocking=True).float() / 255.0
            model((x - mean) / std).float().cpu()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ours(args: argparse.Namespace, images: torch.Tensor, folder: str) -> float:
    """Seconds of ``visiontransfer.embed`` over the same decoded images, all included."""
    import visiontransfer

    start = time.perf_counter()
    visiontransfer.embed(
        args.backbone,
        folder,
        dataset=Decoded(images),
        image_size=images.shape[-1],
        batch_size=args.batch_size,
        num_workers=0,
        chunk_size=args.chunk_size,
        accelerator=args.accelerator,
        overwrite=True,
        progress=False,
    )
    return time.perf_counter() - start


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    images = decode_images(args.data, args.images, args.image_size)
    device = (
        "cuda"
        if args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    torch.manual_seed(0)
    model = timm.create_model(args.backbone, num_classes=0).eval().to(device)
    plain_loop(model, images[: args.batch_size * 2], args.batch_size, device)  # warm-up
    baseline, embedded = [], []
    with tempfile.TemporaryDirectory(prefix="vt-bench-embed-") as temp:
        for repeat in range(args.repeats):
            baseline.append(plain_loop(model, images, args.batch_size, device))
            embedded.append(ours(args, images, str(Path(temp, f"run{repeat}"))))
    a, b = len(images) / statistics.median(baseline), len(images) / statistics.median(embedded)
    return {
        "images": len(images),
        "timm_images_per_s": a,
        "embed_images_per_s": b,
        "ratio": b / a,
        "timm_seconds": baseline,
        "embed_seconds": embedded,
    }


# -- 2. memory --------------------------------------------------------------------------------------
class SyntheticRows(Dataset[dict[str, Any]]):
    """``rows`` tiny images, drawn from a pool of 64 random ones (only the row count matters)."""

    def __init__(self, rows: int, size: int) -> None:
        self.rows = rows
        self.pool = torch.randint(
            0, 256, (64, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.pool[index % 64], "label": -1, "index": index}


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Samples this process's resident memory every 20 ms; :attr:`peak` in MB."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _resident_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _resident_mb())
            time.sleep(0.02)


def memory_child(rows: int, chunk_size: int, out: str) -> dict[str, Any]:
    """In a fresh process: the resident-memory peaks of ``embed`` of ``rows`` synthetic rows."""
    import visiontransfer
    from visiontransfer.features import store

    dataset = SyntheticRows(rows, 8)
    merged: dict[str, float] = {}
    original = store.merge_chunks

    def merge_and_mark(*a: Any, **k: Any) -> Any:  # the peak before the final load, too
        result = original(*a, **k)
        merged["peak"] = sampler.peak
        return result

    store.merge_chunks = merge_and_mark  # type: ignore[assignment]
    torch.manual_seed(0)
    base = _resident_mb()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        result = visiontransfer.embed(
            "test_resnet", out, dataset=dataset, image_size=8, batch_size=256, num_workers=0,
            chunk_size=chunk_size, accelerator="cpu", overwrite=True, progress=False,
        )  # fmt: skip
    finally:
        store.merge_chunks = original  # type: ignore[assignment]
        sampler.running = False
        sampler.join()
    seconds = time.perf_counter() - start
    return {
        "rows": len(result),
        "dim": result.dim,
        "seconds": seconds,
        "base_mb": base,
        "peak_embed_and_merge_mb": merged["peak"] - base,
        "peak_with_load_mb": sampler.peak - base,
        "file_mb": os.path.getsize(Path(out, "embeddings.npy")) / 2**20,
    }


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="vt-bench-rows-") as temp:
            command = [
                sys.executable,
                __file__,
                "--memory-child",
                str(rows),
                "--chunk-size",
                str(args.chunk_size),
                "--out",
                str(Path(temp, "rows")),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ})
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {rows:,} rows: {results[-1]}", flush=True)
    return results


# -- 3. faiss ---------------------------------------------------------------------------------------
def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):  # built in blocks: no float64 copy of a million rows
        n = min(100_000, count - start)
        noise = rng.normal(scale=0.5, size=(n, dim)).astype(np.float32)
        out[start : start + n] = centres[rng.integers(1000, size=n)] + noise
    return out


def latency(index: Any, queries: np.ndarray) -> tuple[float, float]:
    """Median ms of one query at a time (100 of them), and ms per query in one batch of all."""
    from visiontransfer.features.search import search

    single = []
    for q in queries[:100]:
        start = time.perf_counter()
        search(index, q[None], 10)
        single.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    search(index, queries, 10)
    return statistics.median(single), (time.perf_counter() - start) * 1000 / len(queries)


def faiss_search(args: argparse.Namespace) -> dict[str, Any]:
    from visiontransfer.features.search import build_index, default_nlist, search

    vectors, queries = clustered(args.vectors, args.dim, 0), clustered(1000, args.dim, 1)
    result: dict[str, Any] = {"vectors": args.vectors, "dim": args.dim, "nlist": default_nlist(args.vectors)}
    indexes = {}
    for kind in ("exact", "ivf"):
        start = time.perf_counter()
        indexes[kind] = build_index(vectors, kind)
        result[f"{kind}_build_s"] = time.perf_counter() - start
        result[f"{kind}_single_ms"], result[f"{kind}_batched_ms_per_query"] = latency(indexes[kind], queries)
    _, truth = search(indexes["exact"], queries[:200], 10)
    _, found = search(indexes["ivf"], queries[:200], 10)
    result["ivf_recall_at_10"] = float(
        np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    )
    return result


def report_throughput(args: argparse.Namespace, t: dict[str, Any]) -> None:
    print(
        f"throughput, {args.backbone} at {args.image_size} px, batch {args.batch_size}, "
        f"{t['images']} images: "
        f"timm loop {t['timm_images_per_s']:.1f} images/s, visiontransfer.embed "
        f"{t['embed_images_per_s']:.1f} images/s, ratio {t['ratio']:.3f}",
        flush=True,
    )


def report_memory(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(
            f"memory, {r['rows']:,} rows x {r['dim']} float32 ({r['file_mb']:.0f} MB on disk) in chunks of "
            f"{args.chunk_size:,}: peak +{r['peak_embed_and_merge_mb']:.0f} MB embedding and merging, "
            f"+{r['peak_with_load_mb']:.0f} MB with the final load ({r['seconds']:.0f} s)",
            flush=True,
        )


def report_faiss(f: dict[str, Any]) -> None:
    print(
        f"faiss, {f['vectors']:,} x {f['dim']}: exact build {f['exact_build_s']:.1f} s, "
        f"{f['exact_single_ms']:.1f} ms/query alone, {f['exact_batched_ms_per_query']:.2f} ms/query in "
        f"batches; IVF{f['nlist']} build {f['ivf_build_s']:.1f} s, {f['ivf_single_ms']:.2f} ms/query alone, "
        f"{f['ivf_batched_ms_per_query']:.3f} ms/query in batches, recall@10 {f['ivf_recall_at_10']:.3f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["throughput", "memory", "faiss"],
        choices=["throughput", "memory", "faiss"],
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of images (CIFAR-10 train)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.chunk_size, args.out)))
        return {}
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if "throughput" in args.parts:
        results["throughput"] = throughput(args)
        report_throughput(args, results["throughput"])
    if "memory" in args.parts:
        results["memory"] = memory(args)
        report_memory(args, results["memory"])
    if "faiss" in args.parts:
        results["faiss"] = faiss_search(args)
        report_faiss(results["faiss"])
    print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
