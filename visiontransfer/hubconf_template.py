"""torch.hub entry point of a backbone exported by visiontransfer; needs timm and safetensors only.

model = torch.hub.load("path/to/export", "backbone", source="local")
"""

import json
import os

dependencies = ["torch", "timm", "safetensors"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _small_input_stem(model):
    """Re-apply visiontransfer's small-image stem: first conv at stride 1, stem max-pool removed."""
    import torch.nn as nn

    name = model.pretrained_cfg["first_conv"]
    name = name[0] if isinstance(name, (list, tuple)) else name
    conv = model.get_submodule(name)
    kernel = 3 if conv.kernel_size[0] > 3 or conv.kernel_size[0] == conv.stride[0] else conv.kernel_size[0]
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel,
        stride=1,
        padding=kernel // 2,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    for pool in ("maxpool", "stem.pool", "stem.maxpool"):
        try:
            module = model.get_submodule(pool)
        except AttributeError:
            continue
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            parent, _, child = pool.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        break


def backbone(num_classes=0, **kwargs):
    """The exported backbone as a timm model (pooled features, or a fresh classifier)."""
    import timm
    from safetensors.torch import load_file

    with open(os.path.join(_HERE, "config.json")) as handle:
        config = json.load(handle)
    model = timm.create_model(
        config["architecture"], pretrained=False, num_classes=0, **{**config.get("model_args", {}), **kwargs}
    )
    if config.get("visiontransfer", {}).get("small_input_stem"):
        _small_input_stem(model)
    model.load_state_dict(load_file(os.path.join(_HERE, "model.safetensors")), strict=True)
    if num_classes:
        model.reset_classifier(num_classes)
    return model
