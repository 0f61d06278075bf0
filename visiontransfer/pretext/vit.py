"""What the pretexts need to know about a timm Vision Transformer: its image and patch size,
whether it takes other image sizes, and its prefix (class, register) tokens."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from visiontransfer.errors import ConfigError


@dataclass(frozen=True)
class ViTGeometry:
    """Image and patch geometry of a timm ``VisionTransformer``.

    Attributes:
        image_size: The side it was built for (``img_size``).
        patch_size: Side of a patch.
        dynamic: Whether it takes other sizes (``dynamic_img_size``: position embeddings resampled).
        num_prefix_tokens: Class and register tokens before the patch tokens.
        embed_dim: Token width.
    """

    image_size: int
    patch_size: int
    dynamic: bool
    num_prefix_tokens: int
    embed_dim: int

    @property
    def grid_size(self) -> int:
        """Patches per side at ``image_size``."""
        return self.image_size // self.patch_size


def vit_geometry(model: nn.Module) -> ViTGeometry | None:
    """The geometry of a timm ``VisionTransformer`` (square images and patches), or None for
    any other model."""
    if not isinstance(model, VisionTransformer):
        return None
    embed = model.patch_embed
    return ViTGeometry(
        image_size=int(embed.img_size[0]) if embed.img_size is not None else 0,
        patch_size=int(embed.patch_size[0]),
        dynamic=bool(model.dynamic_img_size),
        num_prefix_tokens=int(model.num_prefix_tokens),
        embed_dim=int(model.embed_dim),
    )


def check_vit_size(geometry: ViTGeometry | None, size: int | None, flag: str) -> None:
    """A ViT built for one image size must be given that size, unless it is dynamic; ``size`` (of
    the images ``flag`` sets) must be a multiple of the patch size either way."""
    if geometry is None or size is None:
        return
    if not geometry.dynamic and size != geometry.image_size:
        raise ConfigError(
            f"{flag}={size} but the ViT was built for {geometry.image_size}-px images: set img_size in "
            f"--model.backbone_kwargs (e.g. {{img_size: {size}, patch_size: {geometry.patch_size}}}), or add "
            "dynamic_img_size: true there"
        )
    if size % geometry.patch_size:
        raise ConfigError(
            f"{flag}={size} is not a multiple of the ViT's patch size {geometry.patch_size}: choose a "
            "multiple, or another patch_size in --model.backbone_kwargs"
        )
