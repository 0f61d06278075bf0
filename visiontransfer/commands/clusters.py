"""``visiontransfer clusters EMBEDDINGS -k 10``: k-means over saved embeddings, with purity and NMI
against the labels (see :mod:`visiontransfer.features.clusters`)."""

from __future__ import annotations

import argparse

from visiontransfer.commands.feature_args import embeddings_parser, run_on_embeddings


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer clusters`` argument parser."""
    parser = embeddings_parser(
        "clusters",
        "Spherical k-means (faiss) over saved embeddings: clusters.csv (each image's cluster), clusters.json "
        "(sizes; purity and NMI when the images have labels) and clusters.png.",
        "clusters.csv, .json and .png",
    )
    parser.add_argument("-k", type=int, default=10, help="number of clusters (default 10)")
    parser.add_argument("--iterations", type=int, default=20, help="k-means iterations (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-cluster", type=int, default=8, help="images per cluster in clusters.png")
    parser.add_argument("--max-pictured", type=int, default=20, help="clusters in clusters.png (the largest)")
    return parser


def main(args: list[str]) -> None:
    """Entry point; bad input (``-k`` larger than the set) exits with status 2 and one line."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.features.clusters import CSV_NAME, JSON_NAME, PNG_NAME, cluster

    out, result = run_on_embeddings(parser, options, cluster)
    sizes = result.sizes()
    scores = f"; purity {result.purity:.3f}, NMI {result.nmi:.3f}" if result.nmi is not None else ""
    print(
        f"{result.k} clusters of {len(result.assignment):,} images, "
        f"sizes {sizes.min()}..{sizes.max()}{scores}"
    )
    print(f"written: {out}/{CSV_NAME}, {out}/{JSON_NAME}, {out}/{PNG_NAME}")
