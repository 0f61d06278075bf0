"""Deploy whole task models: the parts of ``visiontransfer export`` beyond the backbone's weights.

- :mod:`~visiontransfer.deploy.task`: the checkpoint's module rebuilt from the checkpoint alone, and
  the plain network it deploys (``TransferModule.inference_model``; a backbone's features);
- :mod:`~visiontransfer.deploy.graph`: that network as ONNX or a ``torch.export`` program;
- :mod:`~visiontransfer.deploy.parity`: the written graph checked against PyTorch on real images;
- :mod:`~visiontransfer.deploy.facts`: data, metrics and pretraining the checkpoint records;
- :mod:`~visiontransfer.deploy.card`: the model card (``README.md``);
- :mod:`~visiontransfer.deploy.hub`: the upload to the Hugging Face Hub;
- :mod:`~visiontransfer.deploy.runtime`: :func:`load_model`, whatever file holds the model.

:func:`visiontransfer.export.export` puts them together. (Nothing is imported here: the CLI
reads :data:`~visiontransfer.deploy.graph.FORMATS` without loading the task modules.)
"""
