"""The ``visiontransfer`` command: LightningCLI (fit, validate, test, predict) plus our own
subcommands (:mod:`visiontransfer.commands`). This module only dispatches; it is the top layer."""

from __future__ import annotations

import importlib
import sys

from visiontransfer.errors import ConfigError
from visiontransfer.runtime import keep_freed_memory

COMMANDS = {
    "quickstart": "visiontransfer.commands.quickstart",
    "export": "visiontransfer.commands.export",
    "seeds": "visiontransfer.commands.seeds",
    "report": "visiontransfer.commands.report",
    "shard": "visiontransfer.commands.shard",
    "embed": "visiontransfer.commands.embed",
    "neighbors": "visiontransfer.commands.neighbors",
    "clusters": "visiontransfer.commands.clusters",
    "duplicates": "visiontransfer.commands.duplicates",
    "classify": "visiontransfer.commands.classify",
}
"""Our subcommands: each module has ``main(args)``."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``visiontransfer`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # before the first large allocation (VT_MALLOC=system: glibc's defaults)
    # LightningCLI reads sys.argv, and so do Lightning's DDP launchers, which start the other
    # ranks by re-running this command line: it must hold the arguments.
    sys.argv = [sys.argv[0], *args]
    if args and args[0] in COMMANDS:
        importlib.import_module(COMMANDS[args[0]]).main(args[1:])
        return
    if args and args[0] in ("-h", "--help"):
        print(
            "visiontransfer subcommands: fit, validate, test, predict (LightningCLI), "
            + ", ".join(COMMANDS)
            + "\n"
        )
    run_lightning_cli(args)


def run_lightning_cli(args: list[str]) -> None:
    """``fit | validate | test | predict``: one line and exit status 2 for a config mistake, 1 for
    a non-finite loss."""
    from visiontransfer.callbacks import NonFiniteLossError
    from visiontransfer.checkpoint_io import CheckpointWriteError
    from visiontransfer.commands.lightning_cli import VisionTransferCLI

    command = args[0] if args and not args[0].startswith("-") else "fit"
    try:
        VisionTransferCLI(args=None)
    except ConfigError as error:
        print(f"visiontransfer {command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, CheckpointWriteError) as error:
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
