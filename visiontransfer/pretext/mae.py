"""MAE: masked autoencoders for timm Vision Transformers."""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from visiontransfer.errors import ConfigError, flag, require
from visiontransfer.heads import MAEDecoder
from visiontransfer.losses import masked_patch_mse
from visiontransfer.pretext.augment import SampleRandom, random_hflip, random_resized_crop
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.vit import ViTGeometry, check_vit_size, vit_geometry


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` → ``(B, L, patch_size² · C)`` patches in the ViT's token order (row-major
    over the grid; inside a patch row, column, channel), ``L = (H / p) · (W / p)``."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the {h}x{w} images")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)  # (B, L, p·p·C)


def random_masking(noise: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which patches an image keeps: the ``keep`` with the lowest noise (a uniform random subset
    for uniform noise), as in MAE's reference code.

    Args:
        noise: ``(B, L)`` one random number per patch.
        keep: Patches kept per image, ``1 <= keep <= L``.

    Returns:
        ``kept`` ``(B, keep)`` indices of the kept patches, ``mask`` ``(B, L)`` (1: masked, 0:
        kept) and ``restore`` ``(B, L)``: the position of each grid patch in the kept-then-masked
        order (what the decoder un-shuffles with).
    """
    if noise.ndim != 2 or not 1 <= keep <= noise.shape[1]:
        raise ValueError(f"keep={keep} must be in [1, L] for (B, L) noise, got shape {tuple(noise.shape)}")
    shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are kept
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    return shuffle[:, :keep], torch.gather(mask, 1, restore), restore


class MAE(PretextModule):
    """Reconstruct the pixels of masked patches from the visible ones.

    Paper: He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders Are Scalable Vision
    Learners", CVPR 2022. Each image (a random resized crop and flip, per image on the device)
    is cut into the ViT's patches; a random ``mask_ratio`` of them is dropped; the timm ViT encodes
    the visible ones (with its class token and position embeddings); a light decoder
    (:class:`~visiontransfer.heads.MAEDecoder`, its own mask token and fixed sine-cosine positions)
    predicts every patch's pixels, and the loss is the mean squared error on the masked patches
    against per-patch normalised pixels (:func:`~visiontransfer.losses.masked_patch_mse`). The
    backbone stays the plain timm ViT: decoder and mask token live outside it, so the export is a
    ViT that ``load_backbone``, timm and ``torch.hub`` load. Crops and masks are drawn per image
    from its seed (:class:`~visiontransfer.pretext.augment.SampleRandom`), independent of the
    number of processes and of resumes.

    Args:
        mask_ratio: Share of the patches hidden from the encoder (paper: 0.75).
        decoder_width: Decoder width (paper: 512).
        decoder_depth: Decoder transformer blocks (paper: 8).
        decoder_heads: Decoder attention heads (paper: 16).
        normalize_target: Per-patch normalised pixels as targets (paper: yes, better features).
        crop_scale_min: Smallest area share of the random crop (paper: 0.2).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule`; ``backbone`` must be a
            timm ViT (e.g. ``vit_tiny_patch16_224`` with ``backbone_kwargs: {img_size: 32, patch_size: 4}``).
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        normalize_target: bool = True,
        crop_scale_min: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.geometry = self._check_vit()
        require(0 < mask_ratio < 1, "model", "mask_ratio", mask_ratio, "must be in (0, 1)")
        require(0 < crop_scale_min <= 1, "model", "crop_scale_min", crop_scale_min, "must be in (0, 1]")
        require(min(decoder_depth, decoder_heads) >= 1, "model", "decoder_depth", decoder_depth,
                f"and --model.decoder_heads={decoder_heads} must be >= 1")  # fmt: skip
        fits = decoder_width >= 1 and decoder_width % 4 == 0 and decoder_width % decoder_heads == 0
        require(fits, "model", "decoder_width", decoder_width,
                f"must be a multiple of 4 and of --model.decoder_heads={decoder_heads}")  # fmt: skip
        grid = self.image_size // self.geometry.patch_size
        self.keep = int(grid * grid * (1 - mask_ratio))
        require(1 <= self.keep < grid * grid, "model", "mask_ratio", mask_ratio,
                f"keeps {self.keep} of {grid * grid} patches: it must keep one and mask one")  # fmt: skip
        self.decoder = MAEDecoder(
            self.geometry.embed_dim, grid, self.geometry.patch_size**2 * self.in_chans,
            self.geometry.num_prefix_tokens, decoder_width, decoder_depth, decoder_heads,
        )  # fmt: skip
        self.mask_ratio = mask_ratio
        self.normalize_target = normalize_target
        self.crop_scale = (crop_scale_min, 1.0)

    def _check_vit(self) -> ViTGeometry:
        """The backbone's ViT geometry (a clear error for any other backbone); sets the view size."""
        geometry = vit_geometry(self.backbone)
        if geometry is None:
            raise ConfigError(
                f"--model.backbone={self.backbone_spec.architecture!r} is not a timm VisionTransformer: "
                "MAE masks patch tokens; use a ViT, e.g. vit_small_patch16_224 (for 32-px images with "
                "--model.backbone_kwargs '{img_size: 32, patch_size: 4}')"
            )
        check_vit_size(geometry, self.input_size, flag("data", "image_size"))
        self.image_size = self.input_size if geometry.dynamic and self.input_size else geometry.image_size
        return geometry

    def view(self, batch: dict[str, Any], generator: SampleRandom) -> Tensor:
        """A random resized crop and flip of each image ``(B, C, S, S)`` (uint8-range floats)."""
        x = batch["image"].float() / 255.0
        crop = random_resized_crop(x, self.image_size, self.crop_scale, generator=generator)
        return random_hflip(crop, generator=generator) * 255.0

    def encode(self, x: Tensor, kept: Tensor) -> Tensor:
        """The ViT on the kept patches of normalised images ``x``: ``(B, prefix + K, D)`` tokens."""
        vit = self.backbone
        assert isinstance(vit, VisionTransformer)
        tokens = vit._pos_embed(vit.patch_embed(x))  # (B, prefix + L, D), positions added
        prefix = tokens[:, : self.geometry.num_prefix_tokens]
        patches = tokens[:, self.geometry.num_prefix_tokens :]
        patches = torch.gather(patches, 1, kept.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        tokens = vit.norm_pre(torch.cat([prefix, patches], dim=1))  # (B, prefix + K, D)
        return vit.norm(vit.blocks(tokens))

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None
        epoch = self.current_epoch if self._trainer is not None else 0
        generator = SampleRandom.for_batch(batch["index"], epoch, train=stage == "train")
        x = self.normalize(self.view(batch, generator))
        target = patchify(x, self.geometry.patch_size)  # (B, L, p·p·C)
        noise = generator.uniform(target.shape[1], x)  # (B, L)
        kept, mask, restore = random_masking(noise, self.keep)
        pred = self.decoder(self.encode(x, kept), restore)  # (B, L, p·p·C)
        loss = masked_patch_mse(pred, target, mask, self.normalize_target)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=stage != "train")
        return loss
