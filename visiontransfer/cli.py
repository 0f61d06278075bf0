"""The ``visiontransfer`` command: LightningCLI (fit, validate, test, predict) plus our own
subcommands (quickstart).

Model and data are chosen by ``class_path`` in the YAML files of ``configs/``: LightningCLI's
``class_path`` is the registry, there is no other.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

import visiontransfer  # noqa: F401 - sets NO_ALBUMENTATIONS_UPDATE before albumentations loads
from visiontransfer.callbacks import NonFiniteGuard, NonFiniteLossError, ResumeCheckpoint, RunSummary
from visiontransfer.checkpoint_io import AtomicCheckpointIO
from visiontransfer.errors import ConfigError

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
    "callbacks": [RunSummary()],
}
"""Defaults of every run: CSV logs under ``runs/`` and a closing summary of where things went."""


class VisionTransferCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule chosen by ``class_path``.

    On top of Lightning's: every run gets :class:`~visiontransfer.callbacks.NonFiniteGuard`,
    :class:`~visiontransfer.callbacks.ResumeCheckpoint` (unless the config lists its own) and
    atomic checkpoint writes; ``--ckpt_path last`` finds the newest ``last.ckpt`` of the
    experiment across its version folders; parse errors become one line naming the key.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise ConfigError(explain_parse_error(str(error), parser)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error, ConfigError) or "Union subtypes" not in str(error):
                raise
            # jsonargparse wraps a constructor's ConfigError in its "does not validate" report.
            reasons = [line.strip()[2:] for line in str(error).splitlines() if line.strip().startswith("- ")]
            mine = [r for r in reasons if r.startswith("--") or "--" in r.split(":")[0]]
            if not mine:
                raise
            raise ConfigError(mine[0]) from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        given = [*_as_list(config.get("callbacks")), *callbacks]
        for default in (NonFiniteGuard, ResumeCheckpoint):
            if not any(isinstance(c, default) for c in given):
                callbacks.append(default())
        plugins = _as_list(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (ValueError, MisconfigurationException) as error:  # e.g. fsdp on CPU, devices > GPUs
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"--trainer: {error}") from None

    def before_fit(self) -> None:
        fit_config = self.config_init[self.subcommand]
        if fit_config.get("ckpt_path") == "last":
            fit_config["ckpt_path"] = find_last_checkpoint(self.trainer)


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def find_last_checkpoint(trainer: Trainer) -> str | None:
    """The newest ``last*.ckpt`` of this experiment: every version folder of its loggers and the
    folders of its checkpoint callbacks. None (with a warning) when there is none yet, so a
    requeued job's first start runs from the beginning."""
    roots = [Path(trainer.default_root_dir)]
    roots += [Path(root) for logger in trainer.loggers if (root := getattr(logger, "root_dir", None))]
    folders = [Path(d) for cb in trainer.checkpoint_callbacks if (d := getattr(cb, "dirpath", None))]
    found = [p for root in roots for p in root.glob("*/checkpoints/last*.ckpt")]
    found += [
        p for folder in [*folders, *(r / "checkpoints" for r in roots)] for p in folder.glob("last*.ckpt")
    ]
    if not found:
        where = ", ".join(str(r) for r in roots)
        rank_zero_warn(f"--ckpt_path last: no last.ckpt under {where} yet; starting from the beginning")
        return None
    newest = max(found, key=os.path.getmtime)
    rank_zero_warn(f"--ckpt_path last: resuming from {newest}")
    return str(newest)


def _init_parameters(cls: type) -> list[str]:
    """Constructor arguments of ``cls`` and of the bases its ``**kwargs`` pass to."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass in (LightningModule, LightningDataModule, object):
            break
        params = inspect.signature(klass.__init__).parameters.values()  # type: ignore[misc]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return [n for n in dict.fromkeys(names) if n != "self"]


def _known_options(parser: argparse.ArgumentParser) -> list[str]:
    options = list(getattr(parser, "_option_string_actions", {}))
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        options += list(getattr(sub, "_option_string_actions", {}))
    return options


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def explain_parse_error(message: str, parser: argparse.ArgumentParser) -> str:
    """One line for a jsonargparse error: the key, what is wrong with it, and a close valid name."""
    if match := re.search(r"nrecognized arguments: (.*)", message):
        flags = [a.split("=")[0] for a in match.group(1).split() if a.startswith("--")]
        known = _known_options(parser)
        return "; ".join(f"{f} is not an option{_did_you_mean(f, known)}" for f in flags) + " (see --help)"
    if match := re.search(r"does not accept option '([\w.]+)'", message):
        key = match.group(1)
        known = [o.lstrip("-") for o in _known_options(parser)]
        return f"{key} (in a config file or as --{key}) is not an option{_did_you_mean(key, known)}"
    group = (re.findall(r'Parser key "(\w+)"', message) or ["model"])[0]
    cls_path = (re.findall(r"class_path '([\w.]+)'", message) or [""])[0]
    if (match := re.search(r"(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)", message)) and cls_path:
        option = match.group(1)
        module, _, name = cls_path.rpartition(".")
        accepted = _init_parameters(getattr(importlib.import_module(module), name))
        hint = _did_you_mean(option, accepted, f"--{group}.init_args.")
        return (
            f"--{group}.init_args.{option} is not an argument of {cls_path}{hint} "
            f"(all of them: visiontransfer fit --{group}.help {cls_path})"
        )
    if match := re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message):
        module, name = match.groups()
        found = importlib.import_module(module)
        names = [n for n in dir(found) if not n.startswith("_") and inspect.isclass(getattr(found, n))]
        hint = _did_you_mean(name, names, f"{module}.")
        return f"--{group}.class_path={module}.{name}: no such class{hint}"
    keys = re.findall(r'Parser key "(\w+)":\s*Expected (.+?)\. Got value: (.*)', message)
    if keys:
        key, expected, value = keys[-1]
        flag = f"--{group}.init_args.{key}" if key != group else f"--{group}"
        return f"{flag}={value.strip()}: expected {expected.replace('<class ', '').replace('>', '')}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Given value", "Subtypes", "- Expected a"))]
    return (useful or lines or [message])[-1]


def config_dir() -> Path:
    """The ``configs/`` folder: inside the installed package, or beside it in a source checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


def quickstart(args: list[str]) -> None:
    """``visiontransfer quickstart``: pretrain → transfer → comparison with scratch (embedded data)."""
    from visiontransfer.quickstart import main as quickstart_main

    quickstart_main(args)


def export(args: list[str]) -> None:
    """``visiontransfer export CKPT --out DIR``: the backbone as safetensors + config.json + hubconf.py."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer export",
        description="Export the backbone of a visiontransfer checkpoint (any pretext or transfer module).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by visiontransfer fit")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    options = parser.parse_args(args)
    from visiontransfer.export import export_backbone

    try:
        out = export_backbone(options.checkpoint, options.out)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"visiontransfer export: error: {error}\n")
    print(f"exported backbone to {out}: model.safetensors, config.json, hubconf.py")
    print(f'load it with: visiontransfer.load_backbone("{out}")')
    print(f'          or: torch.hub.load("{out}", "backbone", source="local")')


def seeds(args: list[str]) -> None:
    """``visiontransfer seeds --seeds 0 1 2 --config ...``: one fit + test per seed, mean ± std."""
    from visiontransfer.transfer.seeds import main as seeds_main

    seeds_main(args)


def report(args: list[str]) -> None:
    """``visiontransfer report --data DIR --backbones A.ckpt B.ckpt``: the label-efficiency report."""
    from visiontransfer.report import main as report_main

    report_main(args)


def shard(args: list[str]) -> None:
    """``visiontransfer shard SRC --out DIR``: pack an image folder into tar shards."""
    from visiontransfer.data.shards import main as shard_main

    shard_main(args)


COMMANDS = {"quickstart": quickstart, "export": export, "seeds": seeds, "report": report, "shard": shard}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``visiontransfer`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    # LightningCLI reads sys.argv, and so do Lightning's DDP launchers, which start the other
    # ranks by re-running this command line: it must hold the arguments.
    sys.argv = [sys.argv[0], *args]
    if args and args[0] in COMMANDS:
        COMMANDS[args[0]](args[1:])
        return
    if args and args[0] in ("-h", "--help"):
        print(
            "visiontransfer subcommands: fit, validate, test, predict (LightningCLI), "
            + ", ".join(COMMANDS)
            + "\n"
        )
    command = args[0] if args and not args[0].startswith("-") else "fit"
    try:
        VisionTransferCLI(args=None)
    except ConfigError as error:
        print(f"visiontransfer {command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as error:
        print(f"visiontransfer {command}: error: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Shut DDP's process group down before the interpreter exits (a live gloo group can abort
    the process at exit: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
