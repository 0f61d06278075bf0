"""What the feature commands (embed, neighbors, clusters, duplicates, classify) share: their
one-line errors and a few argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from visiontransfer.backbones.weights import UnsafeCheckpointError
from visiontransfer.errors import ConfigError

T = TypeVar("T")


@contextmanager
def one_line_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """A mistake in the input (a missing folder, a file that is no backbone, ``-k`` too large)
    exits with status 2 and one line: ``visiontransfer <command>: error: ...``."""
    try:
        yield
    except (ConfigError, UnsafeCheckpointError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")


def run_on_embeddings(
    parser: argparse.ArgumentParser, options: argparse.Namespace, function: Callable[..., T]
) -> tuple[str, T]:
    """``function(**options)`` of a command over saved embeddings, ``--out`` defaulting to the
    EMBEDDINGS folder; mistakes in the input are one line (:func:`one_line_errors`). Returns the
    output folder and the result."""
    out = options.out or options.embeddings
    with one_line_errors(parser):
        result = function(**{**vars(options), "out": out})
    return out, result


def bounded(kind: Callable[[str], T], low: float, name: str) -> Callable[[str], T]:
    """An argparse type: ``kind(text)``, at least ``low``."""

    def parse(text: str) -> T:
        value = kind(text)
        if value < low:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {text}")
        return value

    return parse


def embeddings_parser(command: str, description: str, writes: str) -> argparse.ArgumentParser:
    """A parser for ``visiontransfer <command> EMBEDDINGS [--out DIR]``: its options are named as the
    arguments of the function the command calls."""
    parser = argparse.ArgumentParser(prog=f"visiontransfer {command}", description=description)
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="a folder written by `visiontransfer embed`")
    parser.add_argument("--out", default=None, help=f"folder for {writes} (default: EMBEDDINGS)")
    return parser


def add_index_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        choices=("auto", "exact", "ivf"),
        default="auto",
        help="faiss index: exact, ivf (approximate, cached beside the embeddings) or auto "
        "(exact up to 100,000 rows; default)",
    )
