"""``visiontransfer duplicates EMBEDDINGS --threshold 0.95``: byte-identical files and near-duplicate
pairs among saved embeddings (see :mod:`visiontransfer.features.duplicates`)."""

from __future__ import annotations

import argparse

from visiontransfer.commands.feature_args import add_index_argument, embeddings_parser, run_on_embeddings


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer duplicates`` argument parser."""
    parser = embeddings_parser(
        "duplicates",
        "Exact duplicates (same bytes) first, then pairs of images whose cosine similarity is at least "
        "--threshold: duplicates.csv and duplicates.png (look before removing anything).",
        "duplicates.csv and .png",
    )
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine similarity of near duplicates")
    parser.add_argument("--neighbors", type=int, default=10, help="nearest neighbours checked per image")
    parser.add_argument("--no-bytes", dest="by_bytes", action="store_false", help="don't hash the files")
    add_index_argument(parser)
    parser.add_argument("--max-pictured", type=int, default=12, help="pairs drawn in duplicates.png")
    return parser


def main(args: list[str]) -> None:
    """Entry point; bad input exits with status 2 and one line."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.features.duplicates import CSV_NAME, PNG_NAME, find_duplicates

    out, result = run_on_embeddings(parser, options, find_duplicates)
    copies = sum(len(group) - 1 for group in result.exact)
    print(
        f"{len(result.exact):,} groups of identical files ({copies:,} copies), "
        f"{len(result.near):,} pairs with cosine similarity >= {options.threshold}"
    )
    print(f"written: {out}/{CSV_NAME}, {out}/{PNG_NAME}")
