"""``visiontransfer classify BANK QUERIES``: kNN and a linear probe from saved embeddings, with the
online evaluator's rules (see :mod:`visiontransfer.features.classify`)."""

from __future__ import annotations

import argparse

from visiontransfer.commands.feature_args import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer classify`` argument parser (options named as ``classify``'s arguments)."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer classify",
        description="Classify saved query embeddings by a labeled bank of saved embeddings (same backbone): "
        "kNN vote and linear probe; prints their top-1 when the queries have labels, writes predictions.csv.",
    )
    parser.add_argument("bank", metavar="BANK", help="labeled embeddings (e.g. of the training images)")
    parser.add_argument("queries", metavar="QUERIES", help="embeddings to classify (e.g. of the test images)")
    parser.add_argument("-k", type=int, default=20, help="neighbours of the kNN vote (default 20)")
    parser.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    parser.add_argument("--no-knn", dest="knn", action="store_false", help="skip the kNN classifier")
    parser.add_argument("--no-probe", dest="linear_probe", action="store_false", help="skip the linear probe")
    parser.add_argument("--probe-epochs", type=int, default=100, help="full-batch passes of the probe")
    parser.add_argument("--probe-lr", type=float, default=0.01)
    parser.add_argument("--probe-weight-decay", type=float, default=1e-4)
    parser.add_argument("--out", default=None, help="folder for predictions.csv (default: QUERIES)")
    return parser


def main(args: list[str]) -> None:
    """Entry point; bad input (an unlabeled bank, other backbones) exits with status 2 and one line."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.features.classify import CSV_NAME, classify

    out = options.out or options.queries
    with one_line_errors(parser):
        result = classify(**{**vars(options), "out": out})
    for name, value in result.metrics.items():
        print(f"{name}: {value:.4f}")
    print(f"predictions for {len(result.queries):,} images: {out}/{CSV_NAME}")
