"""dino.txt: the DINOv3 ViT-L/16 backbone with dino.txt's vision head and text tower, as VIP
uses it (VIP's abstract: it "moves beyond the CLIP-based paradigm and harnesses" dino.txt).

Architecture facts (shapes, key names, the proxy-attention formula) are those of the official
code (facebookresearch/dinov3) and of VIP's modified copy of it (MiSsU-HH/VIP@5bd25ee).

Presets: ``dinotxt-l16`` (the two official files, by local path), ``tiny-dinotxt`` (this code
at width 64, portable random weights) and ``toy-dinotxt`` (patch 8, width 96, pretrained on the
toy world by ``pretrained.toy_pretrain``, shipped in ``pretrained/weights/``); :func:`create_dinotxt`
builds any of them. VIP plugs in through
``DinoTxtEncoder`` (texts, and the images of a prompt bank); VIP's dense path over it is
``model.vip.dense.DenseDinoTxt``.

- Backbone: timm's ``vit_large_patch16_dinov3_qkvb`` is the DINOv3 ViT-L/16 exactly; its
  checkpoint filter converts the official file (``storage_tokens`` -> ``reg_token``, LayerScale
  names, qkv bias split). The file's RoPE ``periods`` (stored rounded to bf16) are copied over
  timm's fp32 ones: without them tokens differ by up to 2.6e-4.
- Vision head: 2 pre-norm blocks (qkv without bias, SwiGLU MLP, LayerScale, fp32 LayerNorms)
  and ``ln_final``, over [CLS, 4 registers, patches] from the backbone's final norm. Outputs the
  patch embeddings (C) and the global embedding [CLS_out, mean of patches] (2C).
- VIP's proxy attention replaces both head blocks' self-attention: the affinity of the
  backbone's patch tokens, S = F^ F^T, S' = 0.5 (S - 1.5 mean S), entries <= 0 masked, row
  softmax, one map for every head; values, projection, LayerScale, residual and MLP are kept; the
  5 prefix tokens skip attention (their "attention output" is their own norm1 input).
- Text tower: CLIP's BPE tokens (77), a 24-layer causal transformer of width 1280 (qkv without
  bias), ``ln_final``, a bias-free projection to 2C on every token, the EOT token pooled. The
  second half of the text embedding pairs with the mean of patch embeddings: it is what VIP
  compares with pixels.

Ours, where VIP's code has limits (square 336 px grids, batch 1, a NaN ``bias_mask`` without a
checkpoint): any image size that is a multiple of the patch and any batch; S's mean is taken per
image (VIP's is over its batch of one); a row whose entries are all masked (a flat crop, where
VIP gives NaN) attends to itself only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrained.backbone import ImageEncoding, ImageTextEncoder
from pretrained.hub import WeightsUnavailableError
from pretrained.presets import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, EncoderPreset
from pretrained.proxy_attention import proxy_attention

DINOTXT_FILES = (
    "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth",
)
"""dino.txt's two official weight files (facebookresearch/dinov3's hub names), for dinotxt-l16."""

PREFIX_TOKENS = 5  # CLS + 4 registers


@dataclass(frozen=True)
class DinoTxtConfig:
    """Sizes of dino.txt (defaults: the released ViT-L/16 model)."""

    width: int = 1024  # backbone and head width C
    depth: int = 24  # backbone blocks
    heads: int = 16  # backbone and head attention heads
    patch: int = 16
    head_blocks: int = 2
    head_mlp: int = 2752  # SwiGLU hidden: floor(4C 2/3) rounded up to a multiple of 64
    text_width: int = 1280
    text_depth: int = 24
    text_heads: int = 20
    context_length: int = 77
    vocab_size: int = 49408
    layer_scale: float = 1e-5  # LayerScale init (the checkpoint's values replace it); the tiny
    # random preset uses 1 (ours) so that every block of a random model changes its output

    @property
    def embed_dim(self) -> int:
        """The global image / text embedding: [CLS part, patch part], 2C."""
        return 2 * self.width


DINOTXT_L16 = DinoTxtConfig()
TINY_DINOTXT = DinoTxtConfig(**ENCODERS["tiny-dinotxt"].model_cfg)


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (the official head's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """y = w3(SiLU(w1 x) * w2 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class HeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain multi-head self-attention over all tokens (B, T, C)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(*(z.transpose(1, 2) for z in (q, k, v)))
        return self.proj(out.transpose(1, 2).reshape(b, t, c))

    def proxy(self, x: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Values of the patch tokens x (B, N, C) mixed by `affinity` (B, N, N), one map for
        every head; q and k are not used."""
        b, n, c = x.shape
        v = F.linear(x, self.qkv.weight[2 * c :]).reshape(b, n, self.heads, c // self.heads)
        mixed = torch.einsum("bij,bjhd->bihd", affinity.to(v.dtype), v)
        return self.proj(mixed.reshape(b, n, c))


class HeadBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, layer_scale: float = 1e-5):
        super().__init__()
        self.norm1 = LayerNormFp32(dim, eps=1e-5)
        self.attn = HeadAttention(dim, heads)
        self.ls1 = LayerScale(dim, layer_scale)
        self.norm2 = LayerNormFp32(dim, eps=1e-5)
        self.mlp = SwiGLU(dim, mlp)
        self.ls2 = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, affinity: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 5 + N, C); with `affinity` (B, N, N), VIP's proxy attention."""
        z = self.norm1(x)
        if affinity is None:
            attended = self.attn(z)
        else:  # prefix tokens pass through unattended
            prefix, patches = z[:, :PREFIX_TOKENS], z[:, PREFIX_TOKENS:]
            attended = torch.cat([prefix, self.attn.proxy(patches, affinity)], dim=1)
        x = x + self.ls1(attended)
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionHead(nn.Module):
    def __init__(self, config: DinoTxtConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            HeadBlock(config.width, config.heads, config.head_mlp, config.layer_scale)
            for _ in range(config.head_blocks)
        )
        self.ln_final = nn.LayerNorm(config.width, eps=1e-5)

    def forward(
        self, tokens: torch.Tensor, proxy: bool = True, shape: tuple[float, float] = (1.5, 0.5)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, 5 + N, C) from the backbone -> (global (B, 2C), patches (B, N, C)).

        ``proxy``: VIP's proxy attention from the backbone's patch tokens, with ``shape`` =
        (beta, gamma) of S' = gamma (S - beta mean S) (VIP: 1.5, 0.5); else plain attention."""
        affinity = proxy_attention(tokens[:, PREFIX_TOKENS:], *shape) if proxy else None
        x = tokens
        for block in self.blocks:
            x = block(x, affinity)
        x = self.ln_final(x)
        patches = x[:, PREFIX_TOKENS:]
        return torch.cat([x[:, 0], patches.mean(dim=1)], dim=-1), patches


class TextBlock(nn.Module):
    """Pre-norm causal block: x += Attn(LN x); x += MLP(LN x) (no LayerScale)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim, eps=1e-5)
        self.attention = nn.Module()
        self.attention.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attention.proj = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-5)
        self.feed_forward = nn.Module()
        self.feed_forward.fc1 = nn.Linear(dim, 4 * dim)
        self.feed_forward.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        z = self.attention_norm(x)
        q, k, v = self.attention.qkv(z).reshape(b, t, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(
            *(y.transpose(1, 2) for y in (q, k, v)), is_causal=True
        )
        x = x + self.attention.proj(out.transpose(1, 2).reshape(b, t, c))
        ff = self.feed_forward
        return x + ff.fc2(F.gelu(ff.fc1(self.ffn_norm(x))))


class TextTower(nn.Module):
    def __init__(self, config: DinoTxtConfig):
        super().__init__()
        w = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, w))
        self.blocks = nn.ModuleList(
            TextBlock(w, config.text_heads) for _ in range(config.text_depth)
        )
        self.ln_final = nn.LayerNorm(w, eps=1e-5)
        self.linear_projection = nn.Linear(w, config.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 77) CLIP BPE ids -> (B, 2C) at the EOT position (the largest id)."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.linear_projection(self.ln_final(x))
        return x[torch.arange(len(tokens), device=tokens.device), tokens.argmax(dim=-1)]


def create_backbone(config: DinoTxtConfig) -> nn.Module:
    """timm's DINOv3 ViT (``vit_large_patch16_dinov3_qkvb``) at the config's sizes."""
    import timm

    return timm.create_model(
        "vit_large_patch16_dinov3_qkvb",
        pretrained=False,
        num_classes=0,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.heads,
        patch_size=config.patch,
        init_values=config.layer_scale,
    )


class DinoTxt(nn.Module):
    """dino.txt: images -> (global, patch) embeddings, texts -> embeddings."""

    mean = IMAGENET_MEAN  # RGB in [0, 1]
    std = IMAGENET_STD

    def __init__(self, config: DinoTxtConfig = DINOTXT_L16):
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config)
        self.head = VisionHead(config)
        self.text = TextTower(config)

    def encode_image(
        self,
        images: torch.Tensor,
        proxy: bool = True,
        shape: tuple[float, float] = (1.5, 0.5),
        levels: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """images (B, 3, H, W), ImageNet-normalised, H and W multiples of the patch ->
        global (B, 2C), patches (B, H/16, W/16, C) (unnormalised, as the official model) and the
        backbone's patch tokens after the blocks ``levels``, each (B, C, H/16, W/16)."""
        b, _, h, w = images.shape
        p = self.config.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {p}")
        # (B, 5 + N, C) after the final norm, and the level maps, in one pass
        tokens, maps = self.backbone.forward_intermediates(images, indices=list(levels) or [0])
        global_, patches = self.head(tokens, proxy=proxy, shape=shape)
        return global_, patches.reshape(b, h // p, w // p, -1), list(maps) if levels else []

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 2C); [C:] pairs with the mean patch embedding."""
        return self.text(tokens)


# ---------------------------------------------------------------------------------------------
# the official weight files


def _read_state_dict(path: str | os.PathLike, option: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"{option} {str(path)!r}: no such file")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # tensors only: nothing in the file is executed
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(
            f"{option} {str(path)!r} is not a readable weights file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{option} {str(path)!r} holds no state dict")
    return state


def _load_exactly(module: nn.Module, state: dict, what: str, option: str) -> None:
    """Load with every key accounted for: missing or unexpected keys are listed, never skipped."""
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:

        def shown(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        raise WeightsUnavailableError(
            f"{option}: the file does not fit the {what}: "
            + "; ".join(
                part
                for part in (
                    f"{len(missing)} missing keys ({shown(missing)})" if missing else "",
                    f"{len(unexpected)} unexpected keys ({shown(unexpected)})"
                    if unexpected
                    else "",
                )
                if part
            )
            + ". Pass the official file for this model"
        )


def load_backbone_weights(
    model: DinoTxt, path: str | os.PathLike, option: str = "--encoder-weights"
) -> None:
    """The official ``dinov3_vitl16_pretrain_lvd1689m-*.pth`` into the timm backbone."""
    from timm.models.eva import checkpoint_filter_fn

    state = _read_state_dict(path, option)
    periods = state.get("rope_embed.periods")
    where = f"{option} ({Path(path).name})"
    _load_exactly(model.backbone, checkpoint_filter_fn(state, model.backbone), "backbone", where)
    if periods is not None:  # the file's (bf16-rounded) periods, for bit parity
        model.backbone.rope.periods.copy_(periods.float())


def load_dinotxt_weights(
    model: DinoTxt, path: str | os.PathLike, option: str = "--encoder-weights"
) -> None:
    """The official ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth``: the vision head
    (``visual_model.head.*``) and the text tower (``text_model.*``); ``logit_scale`` unused."""
    state = _read_state_dict(path, option)
    head, text, other = {}, {}, []
    for key, value in state.items():
        if key.startswith("visual_model.head."):
            head[key.removeprefix("visual_model.head.")] = value
        elif key.startswith("text_model.backbone."):
            text[key.removeprefix("text_model.backbone.")] = value
        elif key.startswith("text_model.head."):
            text[key.removeprefix("text_model.head.")] = value
        elif key != "logit_scale":
            other.append(key)
    if other:
        raise WeightsUnavailableError(
            f"{option}: the file does not fit dino.txt: {len(other)} unexpected keys "
            f"({', '.join(other[:6])}); pass the official dino.txt head and text file"
        )
    where = f"{option} ({Path(path).name})"
    _load_exactly(model.head, head, "dino.txt vision head", where)
    _load_exactly(model.text, text, "dino.txt text tower", where)


# ---------------------------------------------------------------------------------------------
# the presets: finding the files, building the model


def find_weight_files(weights: str | os.PathLike | None, option: str) -> tuple[Path, Path]:
    """The two official files (backbone, head and text) in the folder ``weights``, or, without
    one, in torch hub's checkpoint folder (where ``torch.hub.load`` of facebookresearch/dinov3
    puts them). Any file starting like the official name (its hash suffix aside) is taken.

    Raises:
        WeightsUnavailableError: one line naming both files, where they were looked for, and
            the option that takes their folder.
    """
    if weights is not None and not Path(weights).is_dir():
        raise WeightsUnavailableError(
            f"{option} {str(weights)!r} is not a folder: give the folder that holds both "
            f"{DINOTXT_FILES[0]} and {DINOTXT_FILES[1]}"
        )
    folder = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints"
    found = []
    for name in DINOTXT_FILES:
        stem = name.rsplit("-", 1)[0]
        hits = sorted(
            p for p in folder.glob(f"{stem}*") if p.suffix in (".pth", ".pt", ".safetensors")
        )
        found.append(hits[0] if hits else None)
    if None in found:
        lacking = [n for n, f in zip(DINOTXT_FILES, found) if f is None]
        lacking = "neither is" if len(lacking) == 2 else f"{lacking[0]} is not"
        raise WeightsUnavailableError(
            f"dino.txt (encoder preset dinotxt-l16) needs its two official weight files "
            f"{DINOTXT_FILES[0]} (DINOv3 ViT-L/16 backbone) and {DINOTXT_FILES[1]} (vision head "
            f"and text tower); {lacking} in {folder}: download them from Meta "
            "(github.com/facebookresearch/dinov3, 'Pretrained models') and pass their folder "
            f"with {option} DIR"
        )
    return found[0], found[1]


def dinotxt_config(preset: EncoderPreset) -> DinoTxtConfig:
    """The preset's sizes: ``model_cfg`` (``DinoTxtConfig``'s fields), else ViT-L/16's."""
    return DinoTxtConfig(**preset.model_cfg) if preset.model_cfg else DINOTXT_L16


def dinotxt_architecture(preset: EncoderPreset) -> DinoTxt:
    """The preset's architecture with portable random weights (``pretrained.portable_init``: the
    same bits on every CPU), as ``tiny-dinotxt`` is and as ``toy-dinotxt`` starts before its
    file loads (and its pretraining starts)."""
    from pretrained.portable_init import build_portable

    config = dinotxt_config(preset)
    return build_portable(lambda: {"dinotxt": DinoTxt(config)}, preset.seed)["dinotxt"]


def create_dinotxt(
    preset: EncoderPreset,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    option: str = "--encoder-weights",
):
    """dino.txt for an encoder preset of family ``dinotxt``: a ``BuiltEncoder`` (eval, fp32, CPU).

    ``tiny-dinotxt``: portable random weights (the same bits on every CPU); ``toy-dinotxt``: its
    portable initial weights, then its file pretrained on the toy world
    (``pretrained/weights/toy-dinotxt.safetensors``, or the file ``weights``:
    ``pretrained.bundled_weights``); ``dinotxt-l16``: the two official files from the folder
    ``weights`` (:func:`find_weight_files`), or the architecture with seeded random weights when
    ``random_weights`` (speed only).
    """
    from pretrained.backbone import BuiltEncoder
    from pretrained.fingerprint import warn_if_unrecorded, weights_fingerprint
    from pretrained.hub import refuse_weights_for_random

    config = dinotxt_config(preset)
    if preset.is_random or random_weights:
        refuse_weights_for_random(preset.name, weights)
        if preset.is_random or preset.bundled is not None:
            model = dinotxt_architecture(preset)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(preset.seed)
                model = DinoTxt(config)
        source = f"random(seed={preset.seed})"
    elif preset.bundled is not None:  # the toy preset: our own pretrained file
        from pretrained.bundled_weights import bundled_path, load_weights

        model = dinotxt_architecture(preset)
        path = weights if weights is not None else bundled_path(preset.bundled)
        load_weights(model, path, option if weights is not None else "the file")
        source = str(weights) if weights is not None else f"bundled:{preset.bundled}"
    else:
        backbone_file, dinotxt_file = find_weight_files(weights, option)
        model = DinoTxt(config)
        load_backbone_weights(model, backbone_file, option)
        load_dinotxt_weights(model, dinotxt_file, option)
        source = f"{backbone_file} + {dinotxt_file.name}"
    model.eval()
    fingerprint = weights_fingerprint(model)
    if (preset.is_random or preset.bundled) and not random_weights and weights is None:
        warn_if_unrecorded(preset.name, fingerprint)
    return BuiltEncoder(model, preset, fingerprint, source)


# ---------------------------------------------------------------------------------------------
# the seam the bank builder and VIP plug into: the image + text encoder (VIP's dense path:
# model.vip.dense.DenseDinoTxt)


class DinoTxtEncoder(ImageTextEncoder):
    """dino.txt as the frozen encoder of a prompt bank and of VIP's texts (``ClipEncoder``'s
    interface), in the space of patch embeddings (C = ``embed_dim``):

    - texts: the second half ([C:]) of the text embedding, L2-normalised (what VIP compares
      with pixels);
    - images: the mean of the head's patch embeddings (= the global embedding's second half)
      through VIP's proxy head, L2-normalised: the visual prompt comes through the same dense
      path as the pixels it is compared with (ours: VIP has no visual prompts);
    - levels: the backbone's patch tokens after the preset's blocks, (B, C, h, w) each.
    """

    def __init__(self, model: DinoTxt, preset: EncoderPreset):
        super().__init__(preset)
        self.model = model

    @property
    def embed_dim(self) -> int:
        return self.model.config.width

    def encode_images(self, images: torch.Tensor, size: int | None = None) -> ImageEncoding:
        """(B, 3, H, W) in [0, 1] -> normalised (B, C) embedding and the level maps."""
        x = self.preprocess(images, size)
        global_, _, maps = self.model.encode_image(x, levels=tuple(self.preset.levels))
        c = self.embed_dim
        return ImageEncoding(F.normalize(global_[:, c:].float(), dim=-1), maps)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, 77) token ids -> (T, C) normalised patch-side text embeddings."""
        c = self.embed_dim
        tokens = tokens.to(self.mean.device)
        return F.normalize(self.model.encode_text(tokens).float()[:, c:], dim=-1)
