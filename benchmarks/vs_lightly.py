"""SimCLR or DINO on CIFAR-10 JPEGs: ``visiontransfer fit`` against LightlySSL's SimCLR or DINO, same
network, data and schedule, so that (as far as the two libraries allow) only the training framework
differs.

    python benchmarks/vs_lightly.py                                  # 5000 images, 3 epochs, 2 repeats
    python benchmarks/vs_lightly.py --images 2000 --epochs 3 --repeats 2 --workers 2
    python benchmarks/vs_lightly.py --method dino                    # DINO (configs/pretrain/dino.yaml)
    python benchmarks/vs_lightly.py --quick                          # a smoke run (minutes on a CPU)
    python benchmarks/vs_lightly.py --frameworks ours                # our side only (no lightly env)
    python benchmarks/vs_lightly.py --repeats 1 --profile-steps 3    # torch.profiler tables of both

**DINO** (``--method dino``): ours ``configs/pretrain/dino.yaml``; lightly's ``DINOTransform``,
``DINOProjectionHead``, ``DINOLoss``, ``update_momentum`` and ``cosine_schedule`` as in lightly's
DINO example, with the config's head widths, crops, temperatures, momentum, last-layer freeze and
gradient clipping. What follows says SimCLR; for DINO the report prints its own differences.

**Ours**: ``visiontransfer fit --config configs/pretrain/simclr.yaml`` with the data, epochs, batch
and workers given on the command line (``--data.manifest``, ``--trainer.max_epochs``,
``--data.batch_size``, ``--data.num_workers``) and a timing callback appended to
``--trainer.callbacks``. Everything else is the config's.

**Lightly**: LightlySSL's own pieces (``SimCLRTransform``, ``LightlyDataset``,
``SimCLRProjectionHead``, ``NTXentLoss``) in a plain LightningModule, as lightly's examples write
it, trained by the same Lightning ``Trainer``. Its backbone is built by the package's own builder
(``visiontransfer.backbones.create_backbone``: timm ``resnet18`` with the small-image stem, 3x3/1
first conv and no max-pool), seeded alike, and its optimizer is ours (SGD with Nesterov momentum,
no weight decay on biases and norms, per-step linear warmup then cosine), with the config's
hyperparameters. lightly is **not** a dependency of the package: the benchmark makes its own
environment (``--venv``, default under the system's temp folder): ``python -m venv``, a ``.pth``
file that adds this interpreter's site-packages (torch, lightning, timm and visiontransfer are
shared, nothing large is downloaded) and ``pip install --no-deps lightly==...`` (lightly's
declared ``hydra-core`` serves its CLI only and is not installed). Needs PyPI the first time.

Both train on the same ``--images`` CIFAR-10 training files (a seeded random subset), the same 98%
of them (ours holds out the config's ``val_fraction`` 2% to validate on; the lightly side is given
exactly the remaining files), at 32 px, with the same batch, epochs, workers, seed and precision.
Runs alternate (ours, lightly, ours, lightly, ... ``--repeats`` times), each in its own process.

Measured, identically for both sides:

- **training images/s**: an ``EpochTimer`` callback (defined here, injected on both sides) times
  each epoch from ``on_train_epoch_start`` to the last ``on_train_batch_end`` (so validation and
  checkpointing at the epoch's end are left out; the first batch's loading is in) and counts the
  images of the batches; the figure is the median over the epochs after the first (the first pays
  for worker start-up and warm-up; with one epoch it is that one).
- **peak memory**: the process tree (the training process and its DataLoader workers): the summed
  RSS sampled every 0.2 s, the summed PSS every ``--pss-interval`` s (default 2: reading PSS walks
  the page tables and takes CPU from the run being measured, the more the more memory that side
  has); the peak of the summed RSS (counts pages the forked workers share once per process, so it
  overstates) and of the summed PSS (shared pages split between the processes: the better figure
  of the tree's real footprint).
- **kNN top-1**: the saved backbones are evaluated afterwards in this process with the same code
  (``visiontransfer.probes.knn_predict``: k=20, cosine, temperature 0.07 weighted vote): a bank of
  ``--bank-per-class`` labeled training images per class, ``--query`` CIFAR-10 test images.

Where the two sides differ (``SimCLRTransform`` is set to our config's values: crop scale
(0.08, 1), aspect (3/4, 4/3), flip 0.5, colour jitter p 0.8 with brightness/contrast/saturation
0.8 s and hue 0.2 s (or the config's ``hue``) for strength s = ``jitter_strength`` 0.5, greyscale p
0.2 (or ``grayscale_p``), blur off as
``blur: false``, ImageNet normalisation):

- *where augmentations run*: ours decodes in the workers and makes the two views batched in the
  training process, on its device (tensor ops; on a CPU machine that is the main process); lightly
  decodes (PIL) and makes both views per image in the DataLoader workers (torchvision transforms).
- *colour jitter*: torchvision shuffles the order of brightness, contrast, saturation and hue for
  each image and clamps after each; ours applies them in a fixed order and rotates hue in YIQ
  (torchvision: an HSV hue shift).
- *crop*: ours cuts a sub-pixel box resampled by ``roi_align`` (bilinear, averaged when shrinking);
  torchvision cuts an integer box (10 tries, then a centre crop) resized bilinearly with antialias.
- *blur* (off here): ours a separable Gaussian of 10% of the side, sigma in (0.1, 2); lightly PIL's
  ``GaussianBlur(radius=sigma)``, sigma in (0.1, 2).
- *projection head*: ours Linear(512, 512)-BN-ReLU-Linear(512, 128) with biases; lightly's
  ``SimCLRProjectionHead(512, 512, 128)`` has no biases and a BatchNorm on its output.
- *loss*: ``nt_xent`` and ``NTXentLoss`` compute the same NT-Xent over the 2N views (temperature
  0.5 from the config).
- *the run*: ours validates on the held-out 2% and writes a checkpoint after each epoch, and has
  its CLI's callbacks (run summary, non-finite guard, LR monitor); both outside the timed window.
  Sampling: ours its resumable seeded sampler, lightly ``DataLoader(shuffle=True)``.

Prints one row per run and a summary (medians over repeats, with ours/lightly ratios), and writes
``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10"
CONFIG = REPO / "configs" / "pretrain" / "simclr.yaml"
CONFIGS = {"simclr": CONFIG, "dino": REPO / "configs" / "pretrain" / "dino.yaml"}
"""Our config of each ``--method`` (the shared recipe; ``--config`` takes another)."""
DEFAULT_VENV = Path(tempfile.gettempdir()) / "visiontransfer-bench-lightly-venv"
LIGHTLY_REQUIREMENT = "lightly==1.6.0"
"""What ``pip install --no-deps`` puts into the lightly environment (the version this was written
against; ``--lightly`` changes it)."""
LIGHTLY_IMPORTS = (
    "lightly.data",
    "lightly.loss",
    "lightly.models.modules",
    "lightly.models.utils",
    "lightly.transforms",
    "lightning",
    "timm",
    "visiontransfer.backbones",
)
"""What the lightly child imports: the environment is ready when all of them load."""
FRAMEWORKS = ("ours", "lightly")
KNN_K = 20
KNN_TEMPERATURE = 0.07
QUICK = {"images": 256, "epochs": 2, "repeats": 1, "batch_size": 64, "bank_per_class": 20, "query": 200}
"""``--quick`` values (for the arguments not given explicitly)."""
DEFAULTS = {
    "images": 5000,
    "epochs": 3,
    "repeats": 2,
    "batch_size": None,
    "bank_per_class": 500,
    "query": 2000,
}
"""Defaults of the arguments ``--quick`` changes (``batch_size`` None: the config's, 256)."""


# -- timing: the callback both sides train with -------------------------------------------------
def batch_images(batch: Any) -> int:
    """Images in a training batch: ours ``{"image": (B, ...)}``, lightly ``([view0, view1], targets,
    filenames)``, or a plain ``(images, ...)`` tuple."""
    images = batch.get("image") if isinstance(batch, dict) else batch
    while isinstance(images, (list, tuple)) and images:
        images = images[0]
    return int(images.shape[0]) if isinstance(images, torch.Tensor) and images.ndim > 0 else 0


class EpochTimer(L.Callback):
    """Wall time and images of each training epoch, from ``on_train_epoch_start`` to the last
    ``on_train_batch_end`` (validation and checkpointing after the last batch are not in it); on
    CUDA each boundary waits for the device. With ``out``, written as JSON after every epoch.

    Args:
        out: JSON file to write ``{"epochs": [{"seconds", "images"}, ...], "cuda_peak_bytes"}`` to.
    """

    def __init__(self, out: str | None = None) -> None:
        self.out = out
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0
        self._last: float | None = None
        self._images = 0

    @staticmethod
    def _now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._last, self._images = self._now(trainer), None, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last = self._now(trainer)
        self._images += batch_images(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is None:
            return
        self.epochs.append({"seconds": self._last - self._start, "images": self._images})
        if self.out and trainer.is_global_zero:
            cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            Path(self.out).write_text(json.dumps({"epochs": self.epochs, "cuda_peak_bytes": cuda}))


def images_per_second(epochs: Sequence[dict[str, float]]) -> float:
    """Median images/s over the epochs after the first (the first alone if there is only one)."""
    if not epochs:
        return float("nan")
    timed = epochs[1:] or epochs[:1]
    return statistics.median(e["images"] / e["seconds"] for e in timed if e["seconds"] > 0)


class StepProfiler(L.Callback):
    """``torch.profiler`` over optimizer steps ``first`` to ``first + steps - 1`` of the fit (the
    loader's waits between them included), written to ``out`` as the operator table sorted by self
    CPU time, with the window's wall time. Profiling slows the run: its images/s are not figures.

    Args:
        out: Text file for the table.
        steps: Steps profiled.
        first: The first profiled step (0-based; the first steps pay for warm-up).
        rows: Operators listed.
    """

    def __init__(self, out: str, steps: int = 3, first: int = 2, rows: int = 40) -> None:
        self.out, self.steps, self.first, self.rows = out, steps, first, rows
        self._profile: Any = None
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._profile is None and trainer.global_step == self.first:
            self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profile.__enter__()
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._profile is None or trainer.global_step < self.first + self.steps:
            return
        seconds = time.perf_counter() - self._start
        self._profile.__exit__(None, None, None)
        table = self._profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.rows)
        last = self.first + self.steps - 1
        head = f"steps {self.first}-{last}: {seconds:.2f} s wall, {torch.get_num_threads()} threads"
        if trainer.is_global_zero:
            Path(self.out).write_text(head + "\n" + table)
        self._profile = None
        self.first = -1  # once


# -- memory of a process tree -------------------------------------------------------------------
def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/*/stat``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _proc_memory(pid: int, field: str) -> int:
    """``Rss`` or ``Pss`` of one process in bytes from ``/proc`` (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(pid: int, pss: bool = True) -> tuple[int, int | None]:
    """Summed RSS and (with ``pss``) summed PSS (None where unavailable) in bytes of ``pid`` and its
    descendants. RSS is cheap to read; PSS is not: the kernel walks the page tables of every process
    for ``smaps_rollup`` (about 7 ms of CPU per GiB resident, measured here)."""
    try:
        import psutil
    except ImportError:
        pids = _proc_tree(pid)
        shares = [_proc_memory(p, "Pss") for p in pids] if pss else []
        return sum(_proc_memory(p, "Rss") for p in pids), sum(shares) if any(shares) else None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, None
    rss, total_pss = 0, 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
        except psutil.NoSuchProcess:  # ended meanwhile (a worker at the end of an epoch)
            continue
        if pss:  # smaps_rollup (psutil's memory_full_info parses the whole smaps, slower still)
            total_pss += _proc_memory(proc.pid, "Pss")
    return rss, total_pss if pss and total_pss else None


class PeakMemory:
    """Samples :func:`tree_memory` of ``pid`` in a thread, keeping the peaks (``with PeakMemory(pid)
    as peak: ...``; then ``peak.rss``, ``peak.pss`` in bytes): RSS every ``interval`` seconds, PSS
    every ``pss_interval`` (its page-table walks take CPU from the measured run: at 0.2 s they cost
    a tree of 6 GiB about a quarter of a core, more for the side with more memory).

    Args:
        pid: Root of the process tree.
        interval: Seconds between RSS samples.
        pss_interval: Seconds between PSS samples (0: never).
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 2.0) -> None:
        self.pid = pid
        self.interval = interval
        self.pss_interval = pss_interval
        self.rss = 0
        self.pss: int | None = None
        self._last_pss = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        now = time.monotonic()
        want_pss = self.pss_interval > 0 and now - self._last_pss >= self.pss_interval
        rss, pss = tree_memory(self.pid, pss=want_pss)
        if want_pss:
            self._last_pss = now
        self.rss = max(self.rss, rss)
        if pss is not None:
            self.pss = max(self.pss or 0, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_monitored(
    cmd: list[str], log: Path, env: dict[str, str], timeout: float | None, pss_interval: float = 2.0
) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; its exit status, wall time and tree memory peaks."""
    import resource

    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        with PeakMemory(proc.pid, pss_interval=pss_interval) as peak:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and the workers it waited for
    return {
        "rc": rc, "wall_s": time.perf_counter() - start, "peak_rss": peak.rss, "peak_pss": peak.pss,
        "cpu_user_s": after.ru_utime - before.ru_utime, "cpu_sys_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }  # fmt: skip


# -- the shared recipe ----------------------------------------------------------------------------
def recipe(config: Path = CONFIG) -> dict[str, Any]:
    """The model hyperparameters of a pretext config (SimCLR or DINO), with the class defaults it
    leaves out (``min_lr_ratio`` ...), the datamodule's ``val_fraction`` and the trainer's
    ``gradient_clip_val``."""
    import importlib

    import yaml

    from visiontransfer.system import BackboneSystem

    parsed = yaml.safe_load(config.read_text())
    module, _, name = parsed["model"]["class_path"].rpartition(".")
    method = getattr(importlib.import_module(module), name)
    values: dict[str, Any] = {"method": name.lower()}
    for cls in (BackboneSystem, *reversed(method.__mro__[: method.__mro__.index(BackboneSystem)])):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.default is not inspect.Parameter.empty:
                values[name] = param.default
    values.update(parsed["model"].get("init_args", {}))
    values["val_fraction"] = parsed["data"]["init_args"].get("val_fraction", 0.05)
    values["batch_size"] = parsed["data"]["init_args"].get("batch_size", 128)
    values["image_size"] = parsed["data"]["init_args"].get("image_size", 32)
    values["seed"] = parsed.get("seed_everything", 0)
    values["data_seed"] = parsed["data"]["init_args"].get("seed", 0)
    values["gradient_clip_val"] = parsed.get("trainer", {}).get("gradient_clip_val")
    return values


def write_manifest(data: Path, count: int, seed: int, out: Path) -> Path:
    """A manifest of ``count`` random CIFAR-10 training images (seeded; labels are not used)."""
    import numpy as np

    from visiontransfer.data.index import scan_images

    files = scan_images(data / "train")
    if count > len(files):
        raise SystemExit(f"--images {count}: {data / 'train'} holds only {len(files)} images")
    picks = np.random.default_rng(seed).permutation(len(files))[:count]
    manifest = out / f"train_{count}.txt"
    manifest.write_text("\n".join(str(data / "train" / files[i]) for i in sorted(picks)) + "\n")
    return manifest


def training_files(manifest: Path, val_fraction: float, seed: int = 0) -> list[str]:
    """The files of ``manifest`` that our ``PretrainDataModule`` trains on (the rest validate)."""
    from visiontransfer.data import PretrainDataModule

    data = PretrainDataModule(manifest=str(manifest), val_fraction=val_fraction, num_workers=0, seed=seed)
    data.setup("fit")
    train: Any = data.datasets["train"]
    return [train.paths[i] for i in range(len(train))]


def model_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--model-args key=value ...`` as a dict (values as written; YAML-parsed for lightly's side)."""
    pairs = [item.split("=", 1) for item in args.model_args]
    bad = [item for item, pair in zip(args.model_args, pairs, strict=True) if len(pair) != 2 or not pair[0]]
    if bad:
        raise SystemExit(f"--model-args {bad[0]!r}: write key=value, e.g. small_input_stem=false")
    return dict(pairs)  # type: ignore[arg-type]


def ours_command(args: argparse.Namespace, manifest: Path, run_dir: Path, timer: Path) -> list[str]:
    """The ``visiontransfer fit`` command line of one run of ours."""
    script = Path(sys.executable).with_name("visiontransfer")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "visiontransfer.cli"]
    callback = {"class_path": "vs_lightly.EpochTimer", "init_args": {"out": str(timer)}}
    cmd = [
        *launcher, "fit", "--config", str(args.config),
        "--seed_everything", str(args.seed),
        "--data.manifest", str(manifest),
        "--data.batch_size", str(args.batch_size),
        "--data.num_workers", str(args.workers),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.precision", args.precision,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        f"--trainer.callbacks+={json.dumps(callback)}",
    ]  # fmt: skip
    if args.warmup_epochs is not None:
        cmd += ["--model.init_args.warmup_epochs", str(args.warmup_epochs)]
    cmd += [f"--model.init_args.{key}={value}" for key, value in model_overrides(args).items()]
    if args.profile_steps:
        out = str(run_dir / "profile.txt")
        profiler = {
            "class_path": "vs_lightly.StepProfiler",
            "init_args": {"out": out, "steps": args.profile_steps},
        }
        cmd.append(f"--trainer.callbacks+={json.dumps(profiler)}")
    return cmd


def lightly_spec(
    args: argparse.Namespace, hp: dict[str, Any], files: list[str], run_dir: Path
) -> dict[str, Any]:
    """What the lightly child trains with: our recipe's values, the data and the run's settings."""
    root = args.data / "train"
    return {
        "root": str(root),
        "filenames": [os.path.relpath(f, root) for f in files],
        "hp": {
            **hp,
            "warmup_epochs": hp["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs,
        },
        "image_size": hp["image_size"],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "epochs": args.epochs,
        "precision": args.precision,
        "seed": args.seed,
        "out": str(run_dir),
        "timer": str(run_dir / "timer.json"),
        "profile": str(run_dir / "profile.txt"),
        "profile_steps": args.profile_steps,
        "backbone_file": str(run_dir / "backbone.safetensors"),
    }


# -- the lightly environment ----------------------------------------------------------------------
def _missing_imports(python: Path) -> str | None:
    """None when ``python`` imports :data:`LIGHTLY_IMPORTS`, else the error."""
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    done = subprocess.run([str(python), "-c", code, *LIGHTLY_IMPORTS], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["(no output)"])[-1]


def ensure_lightly_env(venv: Path, requirement: str = LIGHTLY_REQUIREMENT) -> Path:
    """The Python of a virtual environment at ``venv`` that has ``requirement`` and sees this
    interpreter's packages through a ``.pth`` file; made (``pip install --no-deps``) when missing.

    Raises:
        SystemExit: the environment could not be made or does not import lightly's pieces.
    """
    python = venv / "bin" / "python"
    marker = venv / "visiontransfer-bench.json"
    wanted = {"requirement": requirement, "shares": sysconfig.get_paths()["purelib"]}
    ready = python.is_file() and marker.is_file() and json.loads(marker.read_text()) == wanted
    if ready and _missing_imports(python) is None:
        return python
    if venv.exists() and any(venv.iterdir()) and not marker.is_file():
        raise SystemExit(f"--venv {venv} exists and was not made by this benchmark: choose another path")
    print(f"making the lightly environment at {venv} ({requirement}, sharing {wanted['shares']})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    where = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # An "import" line of a .pth file runs at start-up: addsitedir also reads the .pth files of the
    # shared folder (the editable install of visiontransfer is one).
    Path(where, "_visiontransfer_shared.pth").write_text(
        f"import site; site.addsitedir({wanted['shares']!r})\n"
    )
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", requirement]
    if subprocess.run(pip).returncode != 0:
        raise SystemExit(
            f"`{' '.join(pip)}` failed (it needs PyPI, or a pip index/cache that has {requirement})"
        )
    problem = _missing_imports(python)
    if problem is not None:
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True).stdout
        raise SystemExit(f"the lightly environment at {venv} does not import: {problem}\npip check:\n{check}")
    marker.write_text(json.dumps(wanted))
    return python


def lightly_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import lightly; print(lightly.__version__)"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


# -- the lightly side (runs in the lightly environment) -------------------------------------------
def _lightly_backbone(hp: dict[str, Any]) -> torch.nn.Module:
    """The backbone both sides train: built by the package's builder from the recipe."""
    from visiontransfer.backbones import create_backbone

    return create_backbone(
        hp["backbone"], in_chans=hp["in_chans"], small_input_stem=hp["small_input_stem"],
        backbone_kwargs=hp["backbone_kwargs"],
    )  # fmt: skip


def _lightly_optimizers(module: L.LightningModule, hp: dict[str, Any]) -> Any:
    """Ours (``visiontransfer.system.BackboneSystem``): no decay on biases and norms, SGD with
    Nesterov momentum or AdamW, per-step linear warmup then cosine; trainable parameters only."""
    from visiontransfer.system import warmup_cosine

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": hp["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if hp["optimizer"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=hp["lr"], momentum=hp["momentum"], nesterov=True
        )
    else:
        opt = torch.optim.AdamW(groups, lr=hp["lr"])
    total = max(1, int(module.trainer.estimated_stepping_batches))
    epochs = max(1, int(module.trainer.max_epochs or 1))
    warmup = min(total - 1, int(hp["warmup_epochs"] * total / epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, total, warmup, hp["min_lr_ratio"])
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _lightly_normalize(backbone: torch.nn.Module, in_chans: int) -> dict[str, list[float]]:
    from visiontransfer.backbones import normalization

    mean, std = normalization(backbone, in_chans)
    return {"mean": list(mean), "std": list(std)}


def _lightly_simclr(hp: dict[str, Any], image_size: int) -> tuple[L.LightningModule, Any]:
    """LightlySSL's SimCLR as its examples write it (Chen et al. 2020), and its transform."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    class SimCLRModel(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _lightly_backbone(hp)
            width = int(self.backbone.num_features)  # type: ignore[arg-type]
            self.projection_head = SimCLRProjectionHead(
                width, hp["projection_hidden_dim"], hp["projection_dim"]
            )
            self.criterion = NTXentLoss(temperature=hp["temperature"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            (x0, x1), _, _ = batch
            loss = self.criterion(self(x0), self(x1))
            self.log("train/loss", loss, batch_size=x0.shape[0])
            return loss

        def configure_optimizers(self) -> Any:
            return _lightly_optimizers(self, hp)

    model = SimCLRModel()
    s = hp["jitter_strength"]
    hue = hp.get("hue")  # ours: the largest shift in turns (None: 0.2 s); lightly: cj_strength * cj_hue
    cj_hue = 0.2 if hue is None or s <= 0 else hue / s
    transform = SimCLRTransform(
        input_size=image_size, cj_prob=0.8, cj_strength=s, cj_bright=0.8, cj_contrast=0.8,
        cj_sat=0.8, cj_hue=cj_hue, min_scale=hp["crop_scale_min"],
        random_gray_scale=hp.get("grayscale_p", 0.2), gaussian_blur=0.5 if hp["blur"] else 0.0,
        sigmas=(0.1, 2.0), hf_prob=0.5, normalize=_lightly_normalize(model.backbone, hp["in_chans"]),
    )  # fmt: skip
    return model, transform


def _lightly_dino(hp: dict[str, Any], image_size: int) -> tuple[L.LightningModule, Any]:
    """LightlySSL's DINO as its examples write it (Caron et al. 2021: EMA teacher, centering,
    teacher temperature warm-up, last layer frozen at first), and its multi-crop transform."""
    import copy

    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import DINOTransform
    from lightly.utils.scheduler import cosine_schedule

    from visiontransfer.pretext.dino import default_local_size

    class DINOModel(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _lightly_backbone(hp)
            width = int(self.backbone.num_features)  # type: ignore[arg-type]
            self.head = DINOProjectionHead(
                width, hp["hidden_dim"], hp["bottleneck_dim"], hp["out_dim"],
                freeze_last_layer=math.ceil(hp["freeze_last_layer_epochs"]),
            )  # fmt: skip
            self.teacher_backbone = copy.deepcopy(self.backbone)
            # A second head (weight_norm does not deepcopy), starting from the student's weights.
            self.teacher_head = DINOProjectionHead(
                width, hp["hidden_dim"], hp["bottleneck_dim"], hp["out_dim"]
            )
            self.teacher_head.load_state_dict(self.head.state_dict())
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)
            self.criterion = DINOLoss(
                output_dim=hp["out_dim"], warmup_teacher_temp=hp["warmup_teacher_temperature"],
                teacher_temp=hp["teacher_temperature"],
                warmup_teacher_temp_epochs=round(hp["teacher_temperature_warmup_epochs"]),
                student_temp=hp["student_temperature"], center_momentum=hp["center_momentum"],
            )  # fmt: skip

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            momentum = cosine_schedule(self.global_step, total, hp["base_momentum"], hp["final_momentum"])
            update_momentum(self.backbone, self.teacher_backbone, m=momentum)
            update_momentum(self.head, self.teacher_head, m=momentum)
            views, _, _ = batch
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
            student = [self.head(self.backbone(v)) for v in views]
            loss = self.criterion(teacher, student, epoch=self.current_epoch)
            self.log("train/loss", loss, batch_size=views[0].shape[0])
            return loss

        def on_after_backward(self) -> None:
            self.head.cancel_last_layer_gradients(current_epoch=self.current_epoch)

        def configure_optimizers(self) -> Any:
            return _lightly_optimizers(self, hp)

    model = DINOModel()
    # Colour jitter: BYOL's 0.4/0.4/0.2/0.1 as ours (strength 0.5 of 0.8/0.8/0.4/0.2).
    transform = DINOTransform(
        global_crop_size=image_size, global_crop_scale=tuple(hp["global_crop_scale"]),
        local_crop_size=hp["local_crop_size"] or default_local_size(image_size),
        local_crop_scale=tuple(hp["local_crop_scale"]), n_local_views=hp["local_crops"], hf_prob=0.5,
        cj_prob=0.8, cj_strength=0.5, cj_bright=0.8, cj_contrast=0.8, cj_sat=0.4, cj_hue=0.2,
        random_gray_scale=0.2, gaussian_blur=(1.0, 0.1, 0.5) if hp["blur"] else (0.0, 0.0, 0.0),
        sigmas=(0.1, 2.0), solarization_prob=0.2,
        normalize=_lightly_normalize(model.backbone, hp["in_chans"]),
    )  # fmt: skip
    return model, transform


def lightly_child(spec_file: str) -> None:
    """Train LightlySSL's SimCLR or DINO as lightly's examples do, with our backbone and optimizer."""
    import safetensors.torch
    from lightly.data import LightlyDataset
    from torch.utils.data import DataLoader

    spec = json.loads(Path(spec_file).read_text())
    hp = spec["hp"]
    L.seed_everything(spec["seed"], workers=True)
    build = {"simclr": _lightly_simclr, "dino": _lightly_dino}[hp["method"]]
    model, transform = build(hp, spec["image_size"])
    dataset = LightlyDataset(input_dir=spec["root"], transform=transform, filenames=spec["filenames"])
    if len(dataset) != len(spec["filenames"]):
        raise SystemExit(f"LightlyDataset found {len(dataset)} of the {len(spec['filenames'])} files")
    workers = spec["workers"]
    loader = DataLoader(
        dataset, batch_size=spec["batch_size"], shuffle=True, drop_last=len(dataset) > spec["batch_size"],
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    callbacks: list[L.Callback] = [EpochTimer(spec["timer"])]
    if spec.get("profile_steps"):
        callbacks.append(StepProfiler(spec["profile"], spec["profile_steps"]))
    trainer = L.Trainer(
        max_epochs=spec["epochs"], accelerator="auto", devices=1, precision=spec["precision"],
        logger=L.pytorch.loggers.CSVLogger(spec["out"], name="lightly"), log_every_n_steps=20,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=spec["out"],
        gradient_clip_val=hp.get("gradient_clip_val"),
    )  # fmt: skip
    trainer.fit(model, loader)
    backbone: Any = model.backbone
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    safetensors.torch.save_file(state, spec["backbone_file"])


# -- kNN evaluation (this process, the same code for both backbones) ------------------------------
def eval_images(data: Path, bank_per_class: int, query: int, image_size: int) -> dict[str, Any]:
    """The kNN bank (labeled training images) and query (test images) as uint8 tensors, decoded once."""
    import numpy as np
    from torch.utils.data import DataLoader, Subset

    from visiontransfer.data import ClassificationDataModule
    from visiontransfer.data.datasets import collate_samples

    dm = ClassificationDataModule(
        root=str(data), samples_per_class=bank_per_class, image_size=image_size, augment="none", num_workers=0
    )
    dm.setup("fit")
    test: Any = dm.datasets["test"]
    picks = np.random.default_rng(0).permutation(len(test))[:query].tolist()

    def load(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(DataLoader(dataset, batch_size=256, num_workers=2, collate_fn=collate_samples))
        return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])

    bank_x, bank_y = load(dm.datasets["train"])
    query_x, query_y = load(Subset(test, picks))
    return {"bank": (bank_x, bank_y), "query": (query_x, query_y), "num_classes": dm.num_classes}


@torch.no_grad()
def embed(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled features of uint8 images, normalised as in training (the backbone's mean and std)."""
    from visiontransfer.system import normalize_images, pixel_statistics

    backbone.eval()
    mean, std = pixel_statistics(backbone, images.shape[1])
    return torch.cat(
        [
            backbone(normalize_images(images[i : i + batch_size], mean, std)).float()
            for i in range(0, len(images), batch_size)
        ]
    )


def knn_top1(
    bank: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor], num_classes: int
) -> float:
    """kNN top-1 of query features against labeled bank features (k=20, cosine, weighted vote)."""
    from visiontransfer.probes import knn_predict, topk_accuracy

    scores = knn_predict(query[0], bank[0], bank[1], num_classes, k=KNN_K, temperature=KNN_TEMPERATURE)
    return topk_accuracy(scores, query[1], 1)


def load_trained_backbone(framework: str, run_dir: Path) -> torch.nn.Module:
    """The backbone a run saved: ours from its ``last.ckpt``, lightly's from ``backbone.safetensors``
    (both rebuilt through the package's spec, weights loaded strictly)."""
    import safetensors.torch

    from visiontransfer.backbones import BackboneSpec
    from visiontransfer.backbones.weights import read_backbone_file

    if framework == "ours":
        found = sorted(run_dir.glob("**/checkpoints/last.ckpt"))
        if not found:
            raise SystemExit(f"no last.ckpt under {run_dir}: see {run_dir / 'train.log'}")
        spec, state = read_backbone_file(found[-1])
    else:
        spec_file = json.loads((run_dir / "spec.json").read_text())["hp"]
        spec = BackboneSpec(
            spec_file["backbone"], spec_file["in_chans"], spec_file["small_input_stem"],
            dict(spec_file["backbone_kwargs"] or {}),
        )  # fmt: skip
        state = safetensors.torch.load_file(run_dir / "backbone.safetensors")
    model = spec.architecture_only().build()
    model.load_state_dict(state, strict=True)
    return model


# -- the benchmark --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 folder with train/ and test/"
    )
    parser.add_argument(
        "--method", choices=list(CONFIGS), default="simclr", help="the pretext both sides train"
    )
    parser.add_argument(
        "--config", type=Path, help="our config of --method (the shared recipe; default: configs/pretrain/)"
    )
    parser.add_argument("--images", type=int, help=f"training images (default {DEFAULTS['images']})")
    parser.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']}")
    parser.add_argument(
        "--repeats", type=int, help=f"runs of each side, alternating (default {DEFAULTS['repeats']})"
    )
    parser.add_argument("--batch-size", type=int, help="default: the config's (256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    parser.add_argument(
        "--warmup-epochs", type=float, help="override the config's warmup_epochs (10) on both sides"
    )
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, help="seed_everything of both sides (default: the config's, 0)")
    parser.add_argument("--bank-per-class", type=int, help=f"kNN bank (default {DEFAULTS['bank_per_class']})")
    parser.add_argument("--query", type=int, help=f"kNN query test images (default {DEFAULTS['query']})")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument(
        "--threads", type=int, help="OMP/MKL threads of the training processes (default: inherited)"
    )
    parser.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help="the lightly environment (made if missing)"
    )
    parser.add_argument("--lightly", default=LIGHTLY_REQUIREMENT, help="pip requirement of lightly")
    parser.add_argument("--timeout", type=float, help="seconds per training run")
    parser.add_argument(
        "--pss-interval", type=float, default=2.0,
        help="seconds between PSS samples of the process tree (0: none; each costs CPU: see above)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/bench_vs_lightly"))
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )  # fmt: skip
    parser.add_argument(
        "--profile-steps", type=int, default=0,
        help="torch.profiler over this many steps of each run (from step 2): RUN/profile.txt, "
        "the operator table by self CPU time (slows those steps: use a run of its own)",
    )  # fmt: skip
    parser.add_argument(
        "--model-args", nargs="*", default=[], metavar="KEY=VALUE",
        help="model arguments changed on both sides, e.g. small_input_stem=false (1/16 of the compute)",
    )  # fmt: skip
    parser.add_argument("--lightly-child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    for name in ("images", "epochs", "repeats", "bank_per_class", "query"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.profile_steps < 0:
        parser.error("--profile-steps must be >= 0")
    args.config = args.config or CONFIGS[args.method]
    args.out = args.out.resolve()
    args.data = args.data.resolve()
    return args


def child_env(threads: int | None) -> dict[str, str]:
    """The environment of the training processes: ``benchmarks/`` importable (our CLI finds
    ``vs_lightly.EpochTimer`` there), and the thread count when given."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def train_once(
    framework: str, repeat: int, args: argparse.Namespace, hp: dict[str, Any], manifest: Path,
    files: list[str], python: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """One training run in its own process: its timings, memory peaks and folder."""
    run_dir = args.out / f"{framework}_{repeat}"
    run_dir.mkdir(parents=True, exist_ok=True)
    timer = run_dir / "timer.json"
    timer.unlink(missing_ok=True)
    if framework == "ours":
        cmd = ours_command(args, manifest, run_dir, timer)
    else:
        assert python is not None
        spec_file = run_dir / "spec.json"
        spec_file.write_text(json.dumps(lightly_spec(args, hp, files, run_dir)))
        cmd = [str(python), str(Path(__file__).resolve()), "--lightly-child", str(spec_file)]
    print(f"[{framework} {repeat}] {' '.join(cmd[:3])} ... (log: {run_dir / 'train.log'})", flush=True)
    result = run_monitored(
        cmd, run_dir / "train.log", child_env(args.threads), args.timeout, args.pss_interval
    )
    if result["rc"] != 0 or not timer.is_file():
        tail = "\n".join((run_dir / "train.log").read_text().splitlines()[-25:])
        raise SystemExit(f"[{framework} {repeat}] failed (exit {result['rc']}):\n{tail}")
    timing = json.loads(timer.read_text())
    result.update(
        framework=framework, repeat=repeat, run_dir=str(run_dir), epochs=timing["epochs"],
        cuda_peak_bytes=timing.get("cuda_peak_bytes"), images_per_s=images_per_second(timing["epochs"]),
    )  # fmt: skip
    print(
        f"[{framework} {repeat}] {result['images_per_s']:.1f} images/s, peak RSS {_gib(result['peak_rss'])}, "
        f"{result['wall_s']:.0f} s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.lightly_child:
        lightly_child(args.lightly_child)
        return {}
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        raise SystemExit(f"CIFAR-10 not found at {args.data} (expected train/ and test/ class folders)")
    import yaml

    hp = recipe(args.config)
    unknown = sorted(set(model_overrides(args)) - set(hp))
    if unknown:
        raise SystemExit(f"--model-args {unknown[0]}: not an argument of the {hp['method']} model")
    hp.update({key: yaml.safe_load(value) for key, value in model_overrides(args).items()})
    if hp["method"] not in DIFFERENCES:
        known = ", ".join(DIFFERENCES)
        raise SystemExit(f"--config {args.config}: a {hp['method']} config; this compares {known}")
    args.batch_size = args.batch_size or hp["batch_size"]
    args.seed = hp["seed"] if args.seed is None else args.seed
    args.out.mkdir(parents=True, exist_ok=True)
    python = ensure_lightly_env(args.venv, args.lightly) if "lightly" in args.frameworks else None
    manifest = write_manifest(args.data, args.images, args.seed, args.out)
    files = training_files(manifest, hp["val_fraction"], hp["data_seed"])
    runs = [
        train_once(framework, repeat, args, hp, manifest, files, python)
        for repeat in range(args.repeats)
        for framework in args.frameworks
    ]
    sets = eval_images(args.data, args.bank_per_class, args.query, hp["image_size"])
    for run in runs:
        backbone = load_trained_backbone(run["framework"], Path(run["run_dir"]))
        bank = (embed(backbone, sets["bank"][0]), sets["bank"][1])
        query = (embed(backbone, sets["query"][0]), sets["query"][1])
        run["knn_top1"] = knn_top1(bank, query, sets["num_classes"])
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "setup": {
            "method": hp["method"], "backbone": _backbone_name(hp),
            "train_images": len(files), "held_out": args.images - len(files),
            "lightly": lightly_version(python) if python else None, "torch_threads": torch.get_num_threads(),
            "bank": len(sets["bank"][1]), "query": len(sets["query"][1]),
        },
        "runs": runs,
        "summary": summarise(runs),
    }  # fmt: skip
    print_report(results, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


SUMMARY_KEYS = (
    "images_per_s", "peak_rss", "peak_pss", "knn_top1", "wall_s", "cpu_user_s", "cpu_sys_s", "minor_faults",
)  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of each side, and ours/lightly ratios when both ran."""
    out: dict[str, Any] = {}
    for framework in FRAMEWORKS:
        mine = [r for r in runs if r["framework"] == framework]
        if not mine:
            continue
        out[framework] = {
            key: statistics.median(r[key] for r in mine if r[key] is not None)
            if any(r[key] is not None for r in mine) else None
            for key in SUMMARY_KEYS
        }  # fmt: skip
    if "ours" in out and "lightly" in out:
        out["ratio"] = {
            key: out["ours"][key] / out["lightly"][key] if out["ours"][key] and out["lightly"][key] else None
            for key in out["ours"]
        }
    return out


def _backbone_name(hp: dict[str, Any]) -> str:
    return f"{hp['backbone']} ({'small-image' if hp['small_input_stem'] else 'default'} stem)"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


DIFFERENCES = {
    "simclr": (
        "augmentations: ours batched in the training process (tensor ops, fixed jitter order, YIQ hue, "
        "roi_align crop); lightly per image in the DataLoader workers (PIL/torchvision, shuffled jitter "
        "order, HSV hue, integer-box crop); same probabilities and strengths (crop 0.08-1, jitter "
        "0.8 s/0.2 s at s=0.5, grey 0.2, no blur)",
        "projection head: ours Linear-BN-ReLU-Linear with biases; lightly's SimCLRProjectionHead without "
        "biases and with an output BatchNorm",
    ),
    "dino": (
        "augmentations: ours batched in the training process (tensor ops as for SimCLR); lightly's "
        "DINOTransform per image in the DataLoader workers; the same crops (2 global, the config's local "
        "crops and scales), BYOL's jitter 0.4/0.4/0.2/0.1 p 0.8, grey 0.2, solarisation 0.2 on the second "
        "global crop, blur as the config",
        "forward passes: ours one over the 2 global crops and one over all local crops (student), one for "
        "the teacher; lightly one per view (student) and one per global crop (teacher)",
        "schedules: teacher momentum cosine per step on both sides; teacher temperature warmed up per step "
        "(ours) or per epoch (lightly's DINOLoss); lightly's last layer is weight-normalised, ours "
        "normalises its rows in forward",
    ),
}
COMMON_DIFFERENCES = (
    "ours validates on the held-out share and checkpoints each epoch (outside the timed window)",
)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    setup = results["setup"]
    print(
        f"\n{setup['method']} {setup['backbone']}, {setup['train_images']} CIFAR-10 training images "
        f"({setup['held_out']} held out by ours for validation), {args.epochs} epochs, "
        f"batch {args.batch_size}, {args.workers} workers, {args.precision}, seed {args.seed}; "
        f"lightly {setup['lightly'] or '-'}; "
        f"kNN: {setup['bank']} bank / {setup['query']} query images, k={KNN_K}"
    )
    rows = [
        "| run | images/s | epoch times (s) | peak RSS (tree) | peak PSS (tree) | kNN top-1 | wall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        times = ", ".join(f"{e['seconds']:.1f}" for e in r["epochs"])
        rows.append(
            f"| {r['framework']} {r['repeat']} | {r['images_per_s']:.1f} | {times} | {_gib(r['peak_rss'])} | "
            f"{_gib(r['peak_pss'])} | {r['knn_top1']:.3f} | {r['wall_s']:.0f} s |"
        )
    summary = results["summary"]
    rows += [
        "",
        "| median over repeats | " + " | ".join(k for k in summary) + " |",
        "| --- |" + " --- |" * len(summary),
    ]
    labels = {
        "images_per_s": ("training images/s", lambda v: f"{v:.1f}"),
        "peak_rss": ("peak RSS (tree)", _gib),
        "peak_pss": ("peak PSS (tree)", _gib),
        "knn_top1": ("kNN top-1", lambda v: f"{v:.3f}"),
        "wall_s": ("process wall time", lambda v: f"{v:.0f} s"),
        "cpu_user_s": ("CPU time, user (tree)", lambda v: f"{v:.0f} s"),
        "cpu_sys_s": ("CPU time, kernel (tree)", lambda v: f"{v:.0f} s"),
        "minor_faults": ("page faults (tree)", lambda v: f"{v / 1e6:.2f} M"),
    }
    for key, (label, fmt) in labels.items():
        cells = []
        for column, values in summary.items():
            value = values.get(key)
            cells.append("-" if value is None else f"{value:.2f}x" if column == "ratio" else fmt(value))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(results["runs"]) and any(r["epochs"] and len(r["epochs"]) < 2 for r in results["runs"]):
        rows.append("\n(one epoch only: images/s includes the first epoch's start-up)")
    print("\n".join(rows))
    if "ratio" in summary:
        print("ratio = ours / lightly (images/s > 1: ours faster; memory < 1: ours smaller)")
    differences = (*DIFFERENCES[setup["method"]], *COMMON_DIFFERENCES)
    print("Where the two sides differ:\n" + "\n".join(f"- {d}" for d in differences), flush=True)
    profiles = [Path(r["run_dir"]) / "profile.txt" for r in results["runs"]]
    for profile in (p for p in profiles if p.is_file()):
        print(f"profile: {profile}")


if __name__ == "__main__":
    main()
