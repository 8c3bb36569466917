"""The cost-volume-guided decoder, CVGD (docs/design.md §2.2).

Three stages; each works on every class's map separately (weights shared over classes), so
classes can be processed in chunks with identical results and memory bounded for K = 847:

    fuse: [class features, image level-j features (projected), F_v^j (if enabled)] -> conv 3x3
    hybrid dilated convolutions 3x3, dilations 1, 2, 4 (residual)
    self-attention over the map's positions (residual; ours: each class alone, over positions only,
    as the paper does not detail the decoder's attention; ``attention`` says where and how far,
    see ``DecoderAttention``)
    2x transposed-convolution upsampling

Stage s uses level j = L + 1 - s (ConvNeXt: strides 32, 16, 8, read as the paper's F_v^{4,3,2}: our
reading, the paper does not state the mapping), so
``visual_levels=(2, 3, 4)`` is the full model, ``(2,)`` the one-level row and ``()`` "only F_c" of
the paper's ablation. Level maps are resized to the stage's grid (ViT levels share one stride).

Every stage and every part of a stage is initialised from its own random stream
(``model.seeding``), so decoders with other ``visual_levels`` start from the same weights on the
parts they share, and building one draws nothing from the global stream.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SettingError
from model.seeding import paired_conv, part_rng

# (ours, the paper says only "self-attention layers") where the decoder attends, per class map:
#   global  every stage, over all positions (quadratic in pixels: the cost of large images x K)
#   coarse  the first (coarsest) stage only, over all its positions; finer stages convolve only
#   window  every stage, within non-overlapping windows of ``attention_window`` x
#           ``attention_window`` positions (the hybrid dilated convolutions mix across windows)
#   none    no attention
DecoderAttention = Literal["global", "coarse", "window", "none"]
DECODER_ATTENTION: tuple[str, ...] = get_args(DecoderAttention)


def check_attention(attention: str, window: int) -> None:
    """Raise SettingError, naming the setting and its choices, for an unknown ``attention`` or a
    window that cannot tile a map (the decoder and ``DPSegConfig`` share this check)."""
    if attention not in DECODER_ATTENTION:
        raise SettingError(f"attention={attention!r}: use one of {', '.join(DECODER_ATTENTION)}")
    if attention == "window" and window < 1:
        raise SettingError(f"attention_window={window}: windows need a side of at least 1")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class HybridDilatedConv(nn.Module):
    """Three 3x3 convolutions with dilations 1, 2, 4: a wide receptive field without gridding."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d), _norm(channels), nn.GELU()
            )
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the positions of each map (pre-norm, residual): all h*w
    of them, or (``window`` > 0) those within each ``window`` x ``window`` tile."""

    def __init__(self, channels: int, heads: int, window: int = 0):
        super().__init__()
        if channels % heads:
            raise SettingError(f"channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        self.window = window
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.window
        if not s or (h <= s and w <= s):  # one window holds the whole map
            return x + self._attend(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(n, c, h, w)
        ph, pw = -h % s, -w % s  # pad to whole windows; padded positions are masked out
        padded = F.pad(x, (0, pw, 0, ph))
        gh, gw = (h + ph) // s, (w + pw) // s
        tokens = padded.view(n, c, gh, s, gw, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s, c)
        mask = None
        if ph or pw:
            valid = F.pad(x.new_ones(1, 1, h, w), (0, pw, 0, ph)).view(gh, s, gw, s)
            valid = valid.permute(0, 2, 1, 3).reshape(1, gh * gw, 1, 1, s * s).bool()
            mask = valid.expand(n, -1, -1, -1, -1).reshape(-1, 1, 1, s * s)
        out = self._attend(tokens, mask)  # (n * gh * gw, s * s, c)
        out = out.view(n, gh, gw, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * s, gw * s)
        return x + out[..., :h, :w]

    def _attend(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (m, t, c) -> attended and projected (m, t, c); ``mask`` (m, 1, 1, t) keys."""
        m, t, c = tokens.shape
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, dim=-1)
        q, k, v = (z.view(m, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (m, heads, t, c/h)
        return self.out(attended.transpose(1, 2).reshape(m, t, c))


class DecoderStage(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        level_channels: int,
        guidance_channels: int,
        use_visual_cost: bool,
        attention_heads: int,
        attention_window: int = 0,
    ):
        super().__init__()
        self.use_visual_cost = use_visual_cost
        # Each part has its own random stream (model.seeding): with or without F_v, a stage
        # starts from the same weights, the F_v input channel of ``fuse`` aside.
        with part_rng("guidance"):
            self.guidance = nn.Conv2d(level_channels, guidance_channels, 1)
        fuse = paired_conv(
            "fuse", in_channels + guidance_channels, int(use_visual_cost), in_channels, 3, padding=1
        )
        self.fuse = nn.Sequential(fuse, _norm(in_channels), nn.GELU())
        with part_rng("hdc"):
            self.hdc = HybridDilatedConv(in_channels)
        with part_rng("attention"):
            self.attention = (
                SpatialSelfAttention(in_channels, attention_heads, attention_window)
                if attention_heads
                else None
            )
        with part_rng("up"):
            self.up = nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2),
                _norm(out_channels),
                nn.GELU(),
            )

    def forward(self, x: torch.Tensor, level: torch.Tensor, visual_cost: torch.Tensor | None):
        """x (B, k, C, h, w) class maps; level (B, C_j, h_j, w_j); visual_cost (B, k, h_j, w_j)."""
        b, k, c, h, w = x.shape
        guidance = self.guidance(
            F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False)
        )
        # fuse = conv3x3(cat[x, guidance, F_v]), computed as conv(cat[x, F_v]) per class plus
        # conv(guidance) once per image: a convolution is linear, and the guidance is the same
        # for every class of an image (ours; the same weights, a third fewer FLOPs in fuse)
        conv, weight = self.fuse[0], self.fuse[0].weight
        g = guidance.shape[1]
        per_class, parts = [weight[:, :c]], [x]
        if self.use_visual_cost:
            fv = F.interpolate(visual_cost, size=(h, w), mode="bilinear", align_corners=False)
            per_class.append(weight[:, c + g :])
            parts.append(fv[:, :, None])
        inputs = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        y = F.conv2d(inputs.flatten(0, 1), torch.cat(per_class, dim=1), None, padding=conv.padding)
        shared = F.conv2d(guidance, weight[:, c : c + g], conv.bias, padding=conv.padding)
        y = (y.view(b, k, *y.shape[1:]) + shared[:, None]).flatten(0, 1)  # (B*k, C, h, w)
        y = self.hdc(self.fuse[2](self.fuse[1](y)))
        if self.attention is not None:
            y = self.attention(y)
        y = self.up(y)
        return y.view(b, k, *y.shape[1:])


class CVGDecoder(nn.Module):
    """Class maps (B, K, C, h, w) + image levels + visual cost volumes -> logits (B, K, 8h, 8w)."""

    def __init__(
        self,
        cost_channels: int,
        level_dims: tuple[int, ...],
        channels: tuple[int, int, int] = (128, 64, 32),
        guidance_channels: tuple[int, int, int] = (64, 32, 16),
        visual_levels: tuple[int, ...] = (2, 3, 4),
        attention_heads: int = 4,
        class_chunk: int = 64,
        attention: DecoderAttention = "coarse",
        attention_window: int = 8,
    ):
        super().__init__()
        check_attention(attention, attention_window)
        num_levels = len(level_dims)
        if num_levels < 3:
            raise SettingError(
                f"the decoder needs 3 feature levels, the encoder gives {num_levels}"
            )
        self.stage_levels = tuple(num_levels - s for s in range(3))  # 1-based: L, L-1, L-2
        unknown = sorted(set(visual_levels) - set(self.stage_levels))
        if unknown:
            raise SettingError(
                f"visual_levels {tuple(visual_levels)}: levels {unknown} have no decoder stage; "
                f"choose from {sorted(self.stage_levels)} (or () for none)"
            )
        self.visual_levels = tuple(sorted(visual_levels))
        self.class_chunk = class_chunk
        ins = (cost_channels, *channels[:-1])
        self.stages = nn.ModuleList()
        for s in range(3):  # each stage, and the head, on its own stream (model.seeding)
            with part_rng(f"stage{s}"):
                self.stages.append(
                    DecoderStage(
                        ins[s],
                        channels[s],
                        level_dims[self.stage_levels[s] - 1],
                        guidance_channels[s],
                        self.stage_levels[s] in self.visual_levels,
                        0
                        if attention == "none" or (attention == "coarse" and s)
                        else attention_heads,
                        attention_window if attention == "window" else 0,
                    )
                )
        with part_rng("head"):
            self.head = nn.Conv2d(channels[-1], 1, 1)
        with part_rng("coarse_head"):  # (ours) class early rejection's detector (model.rejection)
            self.coarse_head = nn.Conv2d(channels[0], 1, 1)

    def forward(
        self,
        class_maps: torch.Tensor,
        levels: list[torch.Tensor],
        visual_costs: dict[int, torch.Tensor],
        coarse: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """class_maps (B, K, C, h, w); levels[j-1] (B, C_j, h_j, w_j); visual_costs {j: (B, K,
        h_j, w_j)} for j in visual_levels -> logits (B, K, 8h, 8w); with ``coarse``, also the
        coarse head's logits (B, K, 2h, 2w) on the first stage's output (training: its loss
        supervises that stage too, as SED's deep supervision)."""
        outputs, coarse_outputs = [], []
        for k0 in range(0, class_maps.shape[1], self.class_chunk):
            ks = slice(k0, k0 + self.class_chunk)
            x = class_maps[:, ks]
            for s, (stage, j) in enumerate(zip(self.stages, self.stage_levels)):
                fv = visual_costs[j][:, ks] if j in self.visual_levels else None
                x = stage(x, levels[j - 1], fv)
                if coarse and s == 0:
                    coarse_outputs.append(self._per_class(self.coarse_head, x))
            outputs.append(self._per_class(self.head, x))
        logits = torch.cat(outputs, dim=1)
        return (logits, torch.cat(coarse_outputs, dim=1)) if coarse else logits

    def coarse_logits(
        self,
        class_maps: torch.Tensor,
        levels: list[torch.Tensor],
        visual_costs: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """The first stage and the coarse head only -> (B, K, 2h, 2w): where each class is,
        at 1/16 of the image (ConvNeXt), for class early rejection."""
        outputs = []
        j = self.stage_levels[0]
        for k0 in range(0, class_maps.shape[1], self.class_chunk):
            ks = slice(k0, k0 + self.class_chunk)
            fv = visual_costs[j][:, ks] if j in self.visual_levels else None
            x = self.stages[0](class_maps[:, ks], levels[j - 1], fv)
            outputs.append(self._per_class(self.coarse_head, x))
        return torch.cat(outputs, dim=1)

    @staticmethod
    def _per_class(head: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """A 1-channel head over (B, k, C, h, w) class maps -> (B, k, h, w)."""
        b, k = x.shape[:2]
        return head(x.flatten(0, 1)).view(b, k, *x.shape[-2:])
