"""The ``visiontransfer`` subcommands: the LightningCLI of ``fit`` / ``validate`` / ``test`` /
``predict`` (:mod:`~visiontransfer.commands.lightning_cli`) and our own (quickstart, seeds,
report, export, shard). Only :mod:`visiontransfer.cli` imports this package; each subcommand
module has a ``main(args)``."""
