"""The LightningCLI behind ``visiontransfer fit | validate | test | predict``.

Model and data are chosen by ``class_path`` in the YAML files of ``configs/``: LightningCLI's
``class_path`` is the registry, there is no other. Data facts reach the model by declaration:
:meth:`VisionTransferCLI.add_arguments_to_parser` links the datamodule's ``image_size``,
``num_classes`` and ``classes`` to the model's constructor arguments ``input_size``,
``num_classes`` and ``class_names`` (a model without such an argument ignores the link).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import itertools
import os
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

import visiontransfer  # noqa: F401 - sets NO_ALBUMENTATIONS_UPDATE before albumentations loads
from visiontransfer.callbacks import NonFiniteGuard, ResumeCheckpoint, RunSummary
from visiontransfer.checkpoint_io import AtomicCheckpointIO, check_writable
from visiontransfer.errors import ConfigError
from visiontransfer.runtime import keep_freed_memory

# Our subcommands build the CLI with args while sys.argv holds the whole command line (Lightning's
# DDP launchers re-run it), which is what this warning is about.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
    "callbacks": [RunSummary()],
}
"""Defaults of every run: CSV logs under ``runs/`` and a closing summary of where things went."""

DATA_LINKS = (("image_size", "input_size"), ("num_classes", "num_classes"), ("classes", "class_names"))
"""``(datamodule attribute, model argument)`` pairs the CLI links when the model is instantiated."""


class VisionTransferCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule chosen by ``class_path``.

    On top of Lightning's: the data facts of :data:`DATA_LINKS` are linked into the model; every
    run gets :class:`~visiontransfer.callbacks.NonFiniteGuard`,
    :class:`~visiontransfer.callbacks.ResumeCheckpoint` (unless the config lists its own, or
    checkpointing is off) and atomic checkpoint writes; ``--ckpt_path last`` finds the newest
    ``last.ckpt`` of the experiment across its version folders; parse and constructor errors
    become one line naming the key; glibc's allocator keeps freed memory
    (:func:`~visiontransfer.runtime.keep_freed_memory`, ``VT_MALLOC=system`` to leave it).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, save_config: bool = True) -> None:
        keep_freed_memory()  # also when called from Python, not through the console script
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
            save_config_callback=SaveConfigCallback if save_config else None,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise ConfigError(explain_parse_error(str(error), parser, args)) from None

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        given = dict(config.get("model", {}).get("init_args", {}) or {})
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = config_error_in(error)
            if cause is None:
                raise
            raise cause from None
        self._check_links(given)

    def _check_links(self, given: dict[str, Any]) -> None:
        """A linked argument the config also sets must agree with the data (it is overridden)."""
        for source, target in DATA_LINKS:
            value, data = given.get(target), getattr(self.datamodule, source, None)
            if value is not None and data is not None and value != data:
                raise ConfigError(
                    f"--model.{target}={value} but the data has {source} {data}: drop --model.{target}, "
                    f"the CLI takes it from the data (--data.{source})"
                )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        given = [*_as_list(config.get("callbacks")), *callbacks]
        defaults: list[type[Callback]] = [NonFiniteGuard]
        if config.get("enable_checkpointing") is not False:
            defaults.append(ResumeCheckpoint)
        for default in defaults:
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
        check_run_folders(self.trainer)
        fit_config = self.config_init[self.subcommand]
        if fit_config.get("ckpt_path") == "last":
            fit_config["ckpt_path"] = find_last_checkpoint(self.trainer)

    def before_validate(self) -> None:
        check_run_folders(self.trainer)

    def before_test(self) -> None:
        check_run_folders(self.trainer)

    def before_predict(self) -> None:
        check_run_folders(self.trainer)


def check_run_folders(trainer: Trainer) -> None:
    """The folders a run writes into (logs, checkpoints) must be writable, checked before it starts
    rather than found out at the first checkpoint.

    Raises:
        ConfigError: naming the folder, the setting that chose it and the reason.
    """
    folders = {str(trainer.default_root_dir): "--trainer.default_root_dir"}
    for logger in trainer.loggers:
        if (save_dir := getattr(logger, "save_dir", None)) is not None:
            folders.setdefault(str(save_dir), "--trainer.logger.init_args.save_dir")
    for callback in trainer.checkpoint_callbacks:
        if (dirpath := getattr(callback, "dirpath", None)) is not None:
            folders.setdefault(str(dirpath), "the ModelCheckpoint callback's dirpath")
    for folder, setting in folders.items():
        if "://" in folder:
            continue
        reason = check_writable(folder)
        if reason is not None:
            raise ConfigError(
                f"{setting}={folder!r} is not writable ({reason}): the run could not save its logs "
                "or checkpoints; choose a writable folder"
            )


def config_error_in(error: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` a constructor raised, found in the chain of exceptions that
    jsonargparse wraps it in ("does not validate against any of the Union subtypes")."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


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


def _config_files(args: Any) -> list[str]:
    """The ``--config`` files of a command line (``--config X`` and ``--config=X``)."""
    words = [str(a) for a in (sys.argv[1:] if args is None else args)]
    files = [b for a, b in itertools.pairwise(words) if a in ("--config", "-c")]
    return files + [w.split("=", 1)[1] for w in words if w.startswith("--config=")]


def yaml_problem(files: list[str]) -> str | None:
    """``bad.yaml line 3: could not find expected ':'`` for the first config file YAML can't read."""
    for file in files:
        try:
            yaml.safe_load(Path(file).read_text())
        except OSError:
            continue
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            context = getattr(error, "context", None)
            detail = f"{problem} ({context})" if context else problem
            return f"{file}{where}: {detail}; fix the YAML syntax there"
    return None


def _explain_option(message: str, parser: argparse.ArgumentParser) -> str | None:
    """An unknown flag or key: which, and the closest valid one."""
    if match := re.search(r"nrecognized arguments: (.*)", message):
        flags = [a.split("=")[0] for a in match.group(1).split() if a.startswith("--")]
        known = _known_options(parser)
        return "; ".join(f"{f} is not an option{_did_you_mean(f, known)}" for f in flags) + " (see --help)"
    if match := re.search(r"does not accept option '([\w.]+)'", message):
        key = match.group(1)
        known = [o.lstrip("-") for o in _known_options(parser)]
        return f"{key} (in a config file or as --{key}) is not an option{_did_you_mean(key, known)}"
    return None


def _explain_class(message: str, group: str) -> str | None:
    """A bad ``class_path`` or an argument the chosen class does not take."""
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
    return None


def explain_parse_error(message: str, parser: argparse.ArgumentParser, args: Any = None) -> str:
    """One line for a jsonargparse error: the key, what is wrong with it, and a close valid name;
    for a config file YAML can't read, the file, the line and the problem."""
    if "<unicode string>" in message or "while parsing" in message or "while scanning" in message:
        problem = yaml_problem(_config_files(args))
        if problem:
            return problem
    explained = _explain_option(message, parser)
    if explained:
        return explained
    group = (re.findall(r'Parser key "(\w+)"', message) or ["model"])[0]
    explained = _explain_class(message, group)
    if explained:
        return explained
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
    packaged = Path(__file__).parents[1] / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "configs"


def fit_then_test(
    args: list[str],
    ckpt_path: str | None = None,
    validate_without_test: bool = True,
    save_config: bool = True,
) -> tuple[VisionTransferCLI, dict[str, float]]:
    """``visiontransfer fit`` with ``args``, then ``test`` when the data has a test set (else
    ``validate``, or nothing when ``validate_without_test`` is False), in this process.

    Args:
        args: The ``fit`` command line (without ``fit``).
        ckpt_path: Which weights to evaluate: None, the final ones (as ``--ckpt_path last``);
            ``best``, the best checkpoint when a checkpoint callback kept one, else the final ones.
        validate_without_test: Validate when there is no test set.
        save_config: Write the run's ``config.yaml`` into its log folder (as ``visiontransfer fit`` does).

    Returns:
        The CLI (trainer, model, datamodule) and the evaluation's metrics (empty if none ran).
    """
    cli = VisionTransferCLI(args=args, run=False, save_config=save_config)
    cli.trainer.fit(cli.model, cli.datamodule)
    if ckpt_path == "best" and not getattr(cli.trainer.checkpoint_callback, "best_model_path", ""):
        ckpt_path = None
    has_split = getattr(cli.datamodule, "has_split", None)
    if has_split is not None and has_split("test"):
        results = cli.trainer.test(cli.model, cli.datamodule, ckpt_path=ckpt_path, verbose=False)
    elif validate_without_test:
        results = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=ckpt_path, verbose=False)
    else:
        return cli, {}
    return cli, {k: float(v) for k, v in results[0].items()}
