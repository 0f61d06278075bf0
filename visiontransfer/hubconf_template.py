"""torch.hub entry point of a backbone exported by visiontransfer; needs torch, timm and safetensors.

model = torch.hub.load("path/to/export", "backbone", source="local")

The small-image stem is rebuilt by a verbatim copy of visiontransfer's own stem code (below), so
the features are the ones ``visiontransfer.load_backbone`` gives.
"""

import json
import os

dependencies = ["torch", "timm", "safetensors"]

_HERE = os.path.dirname(os.path.abspath(__file__))

# <<visiontransfer.backbones.stem>>


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
        adapt_stem_for_small_images(model)  # noqa: F821 - defined by the stem code above
    model.load_state_dict(load_file(os.path.join(_HERE, "model.safetensors")), strict=True)
    if num_classes:
        model.reset_classifier(num_classes)
    return model
