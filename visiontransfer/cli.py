"""The ``visiontransfer`` command: LightningCLI (fit, validate, test, predict) plus our own
subcommands (quickstart).

Model and data are chosen by ``class_path`` in the YAML files of ``configs/``: LightningCLI's
``class_path`` is the registry, there is no other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import visiontransfer  # noqa: F401 - sets NO_ALBUMENTATIONS_UPDATE before albumentations loads
from visiontransfer.callbacks import RunSummary

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
    "callbacks": [RunSummary()],
}
"""Defaults of every run: CSV logs under ``runs/`` and a closing summary of where things went."""


class VisionTransferCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule chosen by ``class_path``."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "omegaconf"},
            args=args,
            run=run,
        )


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


COMMANDS = {"quickstart": quickstart, "export": export, "seeds": seeds}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``visiontransfer`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from `args` alone
    if args and args[0] in COMMANDS:
        COMMANDS[args[0]](args[1:])
        return
    if args and args[0] in ("-h", "--help"):
        print(
            "visiontransfer subcommands: fit, validate, test, predict (LightningCLI), "
            + ", ".join(COMMANDS)
            + "\n"
        )
    VisionTransferCLI(args=args)


if __name__ == "__main__":
    main()
