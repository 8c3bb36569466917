"""dino.txt's two official weight files, with their official key names and shapes.

DINOv3's backbone file (``dinov3_vitl16_pretrain_lvd1689m-*.pth``) and the dino.txt file (vision
head + text tower, ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth``) as
facebookresearch/dinov3 publishes them (the key layout ``pretrained.dinotxt`` reads); values are
random. For the rehearsal (real sizes) and the tests (tiny sizes).
"""

from __future__ import annotations

import torch

from pretrained.dinotxt import DinoTxtConfig


def _random(shapes: dict, generator: torch.Generator | None, dtype: torch.dtype) -> dict:
    return {
        k: (torch.randn(shape, generator=generator) * 0.02).to(dtype) for k, shape in shapes.items()
    }


def official_backbone_state(
    config: DinoTxtConfig, generator: torch.Generator | None = None, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """The DINOv3 backbone file's state dict: official key names and shapes, random values."""
    c, h = config.width, 4 * config.width
    state = {
        "cls_token": (1, 1, c),
        "storage_tokens": (1, 4, c),
        "mask_token": (1, c),
        "patch_embed.proj.weight": (c, 3, config.patch, config.patch),
        "patch_embed.proj.bias": (c,),
        "rope_embed.periods": (c // config.heads // 4,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    for i in range(config.depth):
        for name, shape in {
            "norm1.weight": (c,),
            "norm1.bias": (c,),
            "attn.qkv.weight": (3 * c, c),
            "attn.qkv.bias": (3 * c,),
            "attn.qkv.bias_mask": (3 * c,),
            "attn.proj.weight": (c, c),
            "attn.proj.bias": (c,),
            "ls1.gamma": (c,),
            "norm2.weight": (c,),
            "norm2.bias": (c,),
            "mlp.fc1.weight": (h, c),
            "mlp.fc1.bias": (h,),
            "mlp.fc2.weight": (c, h),
            "mlp.fc2.bias": (c,),
            "ls2.gamma": (c,),
        }.items():
            state[f"blocks.{i}.{name}"] = shape
    out = _random(state, generator, dtype)
    # RoPE's periods are not learned: DINOv3's base ** (2 i / (head_dim / 2)), base 100
    n = c // config.heads // 4
    out["rope_embed.periods"] = (100.0 ** (2 * torch.arange(n) / (2 * n))).to(dtype)
    return out


def official_dinotxt_state(
    config: DinoTxtConfig, generator: torch.Generator | None = None, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """The dino.txt file's state dict (vision head and text tower): official names and shapes."""
    c, m, w = config.width, config.head_mlp, config.text_width
    state = {
        "logit_scale": (1,),
        "visual_model.head.ln_final.weight": (c,),
        "visual_model.head.ln_final.bias": (c,),
    }
    for i in range(config.head_blocks):
        for name, shape in {
            "norm1.weight": (c,),
            "norm1.bias": (c,),
            "attn.qkv.weight": (3 * c, c),
            "attn.proj.weight": (c, c),
            "attn.proj.bias": (c,),
            "ls1.gamma": (c,),
            "norm2.weight": (c,),
            "norm2.bias": (c,),
            "mlp.w1.weight": (m, c),
            "mlp.w1.bias": (m,),
            "mlp.w2.weight": (m, c),
            "mlp.w2.bias": (m,),
            "mlp.w3.weight": (c, m),
            "mlp.w3.bias": (c,),
            "ls2.gamma": (c,),
        }.items():
            state[f"visual_model.head.blocks.{i}.{name}"] = shape
    t = "text_model.backbone."
    state |= {
        f"{t}token_embedding.weight": (config.vocab_size, w),
        f"{t}positional_embedding": (config.context_length, w),
        f"{t}ln_final.weight": (w,),
        f"{t}ln_final.bias": (w,),
        "text_model.head.linear_projection.weight": (2 * c, w),
    }
    for i in range(config.text_depth):
        for name, shape in {
            "attention_norm.weight": (w,),
            "attention_norm.bias": (w,),
            "attention.qkv.weight": (3 * w, w),
            "attention.proj.weight": (w, w),
            "attention.proj.bias": (w,),
            "ffn_norm.weight": (w,),
            "ffn_norm.bias": (w,),
            "feed_forward.fc1.weight": (4 * w, w),
            "feed_forward.fc1.bias": (4 * w,),
            "feed_forward.fc2.weight": (w, 4 * w),
            "feed_forward.fc2.bias": (w,),
        }.items():
            state[f"{t}blocks.{i}.{name}"] = shape
    return _random(state, generator, dtype)
