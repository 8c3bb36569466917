"""CLIP's image tower as a training-free dense encoder (docs/design.md §3).

CLIP's last block mixes every patch with the whole image (its residual stream and FFN carry the
global token's content), so its patch tokens localise poorly. ClearCLIP and SCLIP change only
that block at inference: no residual, no FFN, and an attention whose scores compare a patch
with patches like it. ``attention`` picks the variant:

- ``clear``: softmax(q q^T) (ClearCLIP), no residual, no FFN;
- ``sclip``: softmax(q q^T) + softmax(k k^T) (SCLIP's correlative attention), no residual/FFN;
- ``vanilla``: softmax(q k^T), no residual, no FFN (the ablation of the two above);
- ``proxy``: the proxy attention of :func:`pretrained.proxy_attention.proxy_attention` built from the
  image's own patch similarity (ProxyCLIP's idea without a second backbone), no residual/FFN;
- ``none``: the unchanged last block (plain dense CLIP: the baseline of the overhead benchmark).

A ConvNeXt tower has no attention to change: its last stage's map goes through the head's norm
and projection per pixel (as ``pretrained.backbone.ClipBackbone``); ``proxy`` then smooths that map
with the proxy attention, ``none`` leaves it (:class:`DenseConvNeXt`).

dino.txt (``DenseDinoTxt`` below, VIP's own encoder) has its own dense path: ``proxy``
is VIP's proxy attention in both blocks of its vision head, ``none`` the plain head.
:func:`create_dense_encoder` picks the dense path of a built preset's family
(:data:`DENSE_ENCODERS`; each family's ``vip_attentions`` say which variants it has).

A ViT takes any input size: the positional embedding is resized (bicubic) to the patch grid of
the window, as SCLIP does for 336 px windows of a 224 px model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrained.backbone import ClipBackbone
from pretrained.dinotxt import PREFIX_TOKENS, DinoTxt
from pretrained.families import family_of
from pretrained.presets import EncoderPreset, PresetError
from pretrained.proxy_attention import proxy_attention

DENSE_ENCODERS: dict[str, Callable[..., nn.Module]] = {}
"""VIP's dense path per encoder family (``pretrained.families``): family name ->
``(model, preset, attention, proxy_beta, proxy_gamma) -> module``. A new family adds its own with
:func:`dense_encoder_for`; its ``vip_attentions`` say which ``attention`` values it takes."""


def dense_encoder_for(family: str):
    """Decorator: the dense path of VIP for the encoder family ``family``."""

    def register(make: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        DENSE_ENCODERS[family] = make
        return make

    return register


def check_attention(attention: str | None, preset: EncoderPreset) -> str:
    """``attention`` (None: the family's default, its first) if the preset's family has it."""
    allowed = family_of(preset).vip_attentions
    attention = attention or allowed[0]
    if attention not in allowed:
        raise PresetError(
            f"attention={attention!r} is not available for {preset.name} ({preset.family}); "
            f"use one of {', '.join(allowed)}"
        )
    return attention


def create_dense_encoder(
    built, attention: str | None = None, proxy_beta: float = 1.5, proxy_gamma: float = 0.5
) -> nn.Module:
    """images (B, 3, H, W) in [0, 1] -> (B, D, h, w) for a ``pretrained.backbone.BuiltEncoder``:
    ``DenseViT`` or ``DenseConvNeXt`` for a CLIP, ``DenseDinoTxt`` for dino.txt. Its
    ``attention`` and ``patch_size`` attributes say what it is."""
    attention = check_attention(attention, built.preset)
    make = DENSE_ENCODERS.get(built.preset.family)
    if make is None:
        raise PresetError(
            f"encoder {built.preset.name!r} ({built.preset.family}): VIP has no dense path for "
            f"this family; it has one for {', '.join(DENSE_ENCODERS)}"
        )
    return make(built.model, built.preset, attention, proxy_beta, proxy_gamma)


@dense_encoder_for("dinotxt")
def _dense_dinotxt(model, preset, attention: str, proxy_beta: float, proxy_gamma: float):
    return DenseDinoTxt(model, attention == "proxy", (proxy_beta, proxy_gamma))


class DenseCLIP(nn.Module):
    """What VIP's dense paths over a CLIP share: the preset, the checked ``attention`` and the
    proxy attention's shift and scale (``proxy_beta``, ``proxy_gamma``)."""

    def __init__(
        self,
        clip: nn.Module,
        preset: EncoderPreset,
        attention: str | None = None,
        proxy_beta: float = 1.5,
        proxy_gamma: float = 0.5,
    ):
        super().__init__()
        self.preset = preset
        self.attention = check_attention(attention, preset)
        self.proxy = (proxy_beta, proxy_gamma)


@dense_encoder_for("convnext")
class DenseConvNeXt(DenseCLIP):
    """A CLIP ConvNeXt's dense map (``pretrained.backbone.ClipBackbone``), smoothed by the proxy
    attention (``proxy``) or left (``none``)."""

    patch_size = 32  # input pixels per feature cell: the last stage's stride

    def __init__(self, clip: nn.Module, preset: EncoderPreset, *args, **kwargs):
        super().__init__(clip, preset, *args, **kwargs)
        self.convnext = ClipBackbone(clip, preset)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        dense = self.convnext(images).dense  # (B, D, h, w)
        if self.attention == "proxy":
            b, d, h, w = dense.shape
            tokens = dense.flatten(2).transpose(1, 2)  # (B, N, D)
            mixed = proxy_attention(tokens, *self.proxy) @ tokens.float()
            dense = mixed.transpose(1, 2).reshape(b, d, h, w).to(dense.dtype)
        return dense


@dense_encoder_for("vit")
class DenseViT(DenseCLIP):
    """images (B, 3, H, W) RGB in [0, 1] -> dense features (B, D, h, w) in CLIP's joint space,
    with the last block changed as ``attention`` says (module docstring; default ``clear``)."""

    def __init__(self, clip: nn.Module, preset: EncoderPreset, *args, **kwargs):
        super().__init__(clip, preset, *args, **kwargs)
        self.visual = clip.visual
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    @property
    def patch_size(self) -> int:
        """Input pixels per feature cell: the patch."""
        p = self.visual.patch_size
        return p[0] if isinstance(p, tuple) else p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        tokens, (h, w) = self._tokens_before_last_block(x)
        out = self._last_block(tokens)  # (B, 1 + h*w, C)
        out = self.visual.ln_post(out[:, 1:]) @ self.visual.proj  # (B, h*w, D)
        return out.transpose(1, 2).reshape(out.shape[0], -1, h, w)

    # -- ViT --------------------------------------------------------------------------------

    def _positions(self, h: int, w: int) -> torch.Tensor:
        """(1 + h*w, C) positional embedding for an h x w patch grid (bicubic resize)."""
        pos = self.visual.positional_embedding
        g0, g1 = self.visual.grid_size
        if (h, w) == (g0, g1):
            return pos
        grid = pos[1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos.dtype)])

    def _tokens_before_last_block(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        v = self.visual
        x = v.conv1(x)  # (B, C, h, w)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + self._positions(h, w).to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        for block in v.transformer.resblocks[:-1]:
            x = block(x)
        return x, (h, w)

    def _last_block(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, C) tokens -> (B, 1 + N, C) after the (modified) last block."""
        block = self.visual.transformer.resblocks[-1]
        if self.attention == "none":
            return block(x)
        attn = block.attn
        y = block.ln_1(x)
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        b, n, c = q.shape
        heads = attn.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.reshape(b, n, heads, c // heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        sdpa = F.scaled_dot_product_attention  # fused: no (N, N) matrix kept per head
        if self.attention == "proxy":
            # patches attend by their own similarity; the class token keeps itself
            a = proxy_attention(y[:, 1:], *self.proxy).to(v.dtype)  # (B, N-1, N-1)
            out = torch.cat([v[:, :, :1], a[:, None] @ v[:, :, 1:]], dim=2)
        elif self.attention == "clear":
            out = sdpa(q, q, v)
        elif self.attention == "sclip":
            out = sdpa(q, q, v) + sdpa(k, k, v)  # (softmax(qq) + softmax(kk)) v
        else:  # vanilla
            out = sdpa(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, c)
        return block.ls_1(attn.out_proj(out))  # no residual, no FFN (ClearCLIP)


class DenseDinoTxt(nn.Module):
    """images (B, 3, H, W) RGB in [0, 1] -> (B, C, H/16, W/16) patch embeddings of dino.txt's
    head (with VIP's proxy attention unless ``proxy=False``): what ``VIPSegmenter`` compares
    with the second half of text embeddings, ``(B, C, ceil(H/16), ceil(W/16))``.

    Sizes that are not multiples of the patch are padded at the bottom and right with the mean
    colour (0 after normalisation) and the cells that hold only padding are cut off again
    (ours; the reference pads its crops to multiples of 56 with CLIP's mean colour).
    ``shape`` = (beta, gamma) of the proxy attention (VIP: 1.5, 0.5)."""

    def __init__(self, model: DinoTxt, proxy: bool = True, shape: tuple[float, float] = (1.5, 0.5)):
        super().__init__()
        self.model = model
        self.proxy = proxy
        self.attention = "proxy" if proxy else "none"  # as model.vip.dense names dense paths
        self.shape = shape
        self.register_buffer("mean", torch.tensor(DinoTxt.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(DinoTxt.std).view(1, 3, 1, 1), persistent=False)

    @property
    def patch_size(self) -> int:
        return self.model.config.patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % p, 0, -h % p))
        _, patches, _ = self.model.encode_image(x, proxy=self.proxy, shape=self.shape)
        return patches.permute(0, 3, 1, 2)[:, :, : -(-h // p), : -(-w // p)]

    @torch.no_grad()
    def features_and_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s features and, from the same pass, the backbone's last-block
        attention among its patch tokens (B, N, N): per head a softmax over the patch keys
        (the head's probabilities renormalised over patches: the class and register tokens
        left out), then the heads averaged, as VIP's reference forms its attention map; the
        affinity the reported alias-selection rule uses."""
        attn = self.model.backbone.blocks[-1].attn
        probs: list[torch.Tensor] = []
        fused, attn.fused_attn = attn.fused_attn, False  # the path that forms the probabilities
        hook = attn.attn_drop.register_forward_hook(lambda _m, _i, out: probs.append(out))
        try:
            features = self(images)
        finally:
            hook.remove()
            attn.fused_attn = fused
        a = probs[-1].float()[:, :, PREFIX_TOKENS:, PREFIX_TOKENS:]  # (B, heads, N, N)
        a = a / a.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # softmax over patch keys, per head
        return features, a.mean(dim=1)

    def backbone_attention(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, N) the attention of :meth:`features_and_attention` alone."""
        return self.features_and_attention(images)[1]
