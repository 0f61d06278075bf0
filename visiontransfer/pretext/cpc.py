"""Contrastive predictive coding on image patches (CPC v2)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from visiontransfer.errors import ConfigError, require
from visiontransfer.losses import info_nce
from visiontransfer.pretext.augment import color_jitter, random_grayscale, random_hflip
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.ops import extract_patches


class CausalConv2d(nn.Conv2d):
    """A convolution whose output at row ``r`` sees input rows ``<= r`` only (padding on top)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self.pad = (kernel_size // 2, kernel_size // 2, kernel_size - 1, 0)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class CausalContext(nn.Module):
    """Masked (top-to-bottom autoregressive) context network over a grid of patch vectors.

    Residual blocks of causal 3×3 convolutions with layer norm over channels (per position: a
    norm over the grid would leak rows below into the statistics); the receptive field grows upward
    and sideways but never downward, so the context at row ``r`` summarises rows ``0..r``.

    Args:
        in_channels: Width of the patch vectors.
        width: Width of the context vectors.
        depth: Number of residual blocks.
    """

    def __init__(self, in_channels: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                LayerNorm2d(width),
                nn.ReLU(),
                CausalConv2d(width, width, 3),
                nn.ReLU(),
                nn.Conv2d(width, width, 1),
            )
            for _ in range(depth)
        )

    def forward(self, z: Tensor) -> Tensor:
        """``(B, D, G, G)`` patch vectors → ``(B, width, G, G)`` context vectors."""
        x = self.inp(z)
        for block in self.blocks:
            x = x + block(x)
        return x


def per_patch_augment(patches: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CPC v2-style augmentation drawn independently for every patch: flip, colour jitter, colour
    dropping. ``patches`` is ``(N, 3, P, P)`` float in [0, 1]."""
    patches = random_hflip(patches, generator=generator)
    patches = color_jitter(patches, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=generator)
    return random_grayscale(patches, p=0.25, generator=generator)


def cpc_loss(
    z: Tensor,
    context: Tensor,
    predictors: nn.ModuleList,
    all_keys: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """InfoNCE of predicting patch vectors ``k = 1..K`` rows below from the context.

    Each prediction at ``(b, r, c)`` for step ``k`` must pick ``z[b, r + k, c]`` out of every patch
    vector of the batch (all images and positions are negatives).

    Args:
        z: ``(B, D, G, G)`` patch vectors (the targets).
        context: ``(B, Dc, G, G)`` context vectors.
        predictors: ``K`` 1×1 convolutions ``Dc → D``, one per step.
        all_keys: ``(M, D)`` patch vectors of the whole (multi-process) batch, holding this
            process's ``B*G*G`` vectors of ``z`` (flattened as ``(b, row, col)``) from row
            ``offset``; default: ``z``'s own.
        offset: Row of this process's first patch vector in ``all_keys``.
    """
    b, d, g, _ = z.shape
    keys = z.permute(0, 2, 3, 1).reshape(b * g * g, d) if all_keys is None else all_keys  # (M, D)
    flat = torch.arange(b * g * g, device=z.device).view(b, g, g) + offset  # index (b, row, col)
    losses = []
    for k, predict in enumerate(predictors, start=1):
        if k >= g:
            break
        pred = predict(context[:, :, : g - k])  # (B, D, G-k, G): rows 0..G-k-1 predict row + k
        queries = pred.permute(0, 2, 3, 1).reshape(-1, d)
        positives = flat[:, k:, :].reshape(-1)
        losses.append(info_nce(queries, keys, positives=positives))
    if not losses:
        raise ValueError(f"a {g}x{g} patch grid leaves no row to predict; use more patches per side")
    return torch.stack(losses).mean()


class ContrastivePatches(PretextModule):
    """CPC v2: predict the representations of patches further down the image from the patches above.

    Paper: Hénaff et al., "Data-Efficient Image Recognition with Contrastive Predictive Coding",
    ICML 2020 (arXiv 2019). Each image is cut into a grid of overlapping patches; each patch is
    augmented on its own and encoded by the backbone to a vector; a masked context network reads
    the grid top to bottom; linear predictions ``k = 1..K`` rows ahead are scored by InfoNCE
    against all other patch vectors of the batch (of every process, under DDP).

    Kept from CPC v2: overlapping patches (paper: 64 px every 32 px of 240 px; defaults here
    8 every 4 of 32 px), per-patch augmentation (flips, colour jitter, colour dropping), a
    masked top-to-bottom context network, up to K steps of linear prediction, every other patch of
    the batch as negatives, and layer norm in place of batch norm when the backbone supports it
    (configs pass ``backbone_kwargs: {norm_layer: layernorm2d}`` to timm ResNets: batch norm
    leaks information between the patches of a batch). Not kept: the paper's ResNet-161 and its
    PixelCNN context network (ours is a smaller residual stack of causal convolutions), and
    predictions in the four directions (we predict downward only, as CPC v1/v2's main setting).

    Args:
        patch_size: Side of a patch in pixels.
        patch_stride: Step between patches (half the patch size overlaps them by half).
        prediction_steps: K, the furthest row ahead predicted.
        context_width: Width of the context network.
        context_depth: Residual blocks of the context network.
        augment_patches: Augment every patch independently during training.
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule`.
    """

    def __init__(
        self,
        patch_size: int = 8,
        patch_stride: int = 4,
        prediction_steps: int = 3,
        context_width: int = 256,
        context_depth: int = 3,
        augment_patches: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(patch_size >= 1, "model", "patch_size", patch_size, "must be >= 1")
        require(patch_stride >= 1, "model", "patch_stride", patch_stride, "must be >= 1")
        require(prediction_steps >= 1, "model", "prediction_steps", prediction_steps, "must be >= 1")
        if self.input_size is not None:
            self._check_grid(self.input_size, patch_size, patch_stride)
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.augment_patches = augment_patches
        self.context = CausalContext(self.num_features, context_width, context_depth)
        self.predictors = nn.ModuleList(
            nn.Conv2d(context_width, self.num_features, 1) for _ in range(prediction_steps)
        )

    @staticmethod
    def _check_grid(size: int, patch_size: int, patch_stride: int) -> None:
        """The images must hold a grid of at least 2 rows of patches (naming the flags)."""
        grid = (size - patch_size) // patch_stride + 1 if patch_size <= size else 0
        if grid < 2:
            raise ConfigError(
                f"--data.image_size={size} with --model.patch_size={patch_size} and "
                f"--model.patch_stride={patch_stride} gives a {grid}x{grid} grid: CPC needs at "
                "least 2 rows; lower the patch size or stride, or raise the image size"
            )

    def encode_patches(self, images: Tensor, augment: bool = False) -> Tensor:
        """``(B, 3, H, W)`` uint8 → patch vectors ``(B, D, G, G)``."""
        patches = extract_patches(images, self.patch_size, self.patch_stride)  # (B, G, G, 3, P, P)
        b, g = patches.shape[0], patches.shape[1]
        flat = patches.reshape(b * g * g, *patches.shape[3:]).float() / 255.0  # (B*G*G, 3, P, P)
        if augment:
            flat = per_patch_augment(flat)
        vectors = self.backbone(self.normalize(flat * 255.0))  # (B*G*G, D)
        return vectors.view(b, g, g, -1).permute(0, 3, 1, 2)  # (B, D, G, G)

    def features(self, images: Tensor) -> Tensor:
        """Mean of the patch vectors ``(B, D)``: the representation CPC v2 evaluates."""
        return self.encode_patches(images).mean(dim=(2, 3))

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None
        z = self.encode_patches(images, augment=self.augment_patches and stage == "train")
        keys, offset = self.gather_with_grads(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))  # (M, D)
        loss = cpc_loss(z, self.context(z), self.predictors, keys, offset)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=stage != "train")
        return loss
