"""``visiontransfer neighbors EMBEDDINGS --query IMAGE_OR_FOLDER -k 10``: the most similar images of
saved embeddings to each query (see :mod:`visiontransfer.features.nearest`)."""

from __future__ import annotations

import argparse

from visiontransfer.commands.feature_args import add_index_argument, embeddings_parser, run_on_embeddings


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer neighbors`` argument parser."""
    parser = embeddings_parser(
        "neighbors",
        "The k nearest images (cosine similarity) of saved embeddings to each query image: neighbors.csv "
        "and neighbors.png. The queries are embedded like the embeddings were.",
        "neighbors.csv and .png",
    )
    parser.add_argument("--query", required=True, help="an image file or a folder of images")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    add_index_argument(parser)
    parser.add_argument("--backbone", default=None, help="the embeddings' backbone, if it has moved")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size when embedding the queries")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="loader workers when embedding the queries"
    )
    parser.add_argument("--max-pictured", type=int, default=8, help="queries drawn in neighbors.png")
    return parser


def main(args: list[str]) -> None:
    """Entry point; bad input (``-k`` larger than the set, a missing query) exits with status 2."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.features.nearest import CSV_NAME, PNG_NAME, neighbors

    out, result = run_on_embeddings(parser, options, neighbors)
    where = f"{out}/{CSV_NAME}, {out}/{PNG_NAME}"
    print(
        f"{result.k} neighbours of {len(result.query_paths):,} queries among "
        f"{len(result.bank):,} images: {where}"
    )
