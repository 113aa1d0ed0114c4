"""Exact architectures of the catalog's models, as transformers ``InternVLConfig`` objects.

Used to build random-initialised models of the real shapes (GPU benchmarks) and meta-device models
(placement plans of a 76B model on a laptop). Numbers from ../shared/reference/architectures.md;
where the reference marks a number unverified (Phi-3 and Yi vocabularies) the builder uses the
base model's published value, which moves parameter counts by well under 1 %.

Everything is expressed in transformers' native classes: InternLM2, Yi and Llama-3 language models
become ``llama``; Qwen2 stays ``qwen2``; Phi-3 stays ``phi3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class VisionArch:
    hidden: int
    layers: int
    heads: int
    mlp: int
    qkv_bias: bool
    norm: str  # "layer_norm" or "rms_norm"
    qk_norm: bool


@dataclass(frozen=True)
class LLMArch:
    model_type: str  # native transformers type: llama, qwen2, phi3
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)
    max_positions: int = 32768
    rms_eps: float = 1e-5


VIT_300M = VisionArch(1024, 24, 16, 4096, qkv_bias=True, norm="layer_norm", qk_norm=False)
VIT_6B = VisionArch(3200, 45, 25, 12800, qkv_bias=False, norm="rms_norm", qk_norm=True)

INTERNLM2_1_8B = LLMArch("llama", 2048, 24, 16, 8, 8192, 92553, rope_theta=1e6)
INTERNLM2_5_7B = LLMArch("llama", 4096, 32, 32, 8, 14336, 92553, rope_theta=1e6,
                         rope_scaling={"rope_type": "dynamic", "factor": 2.0})
INTERNLM2_20B = LLMArch("llama", 6144, 48, 48, 8, 16384, 92553, rope_theta=1e6,
                        rope_scaling={"rope_type": "dynamic", "factor": 3.0})
QWEN2_0_5B = LLMArch("qwen2", 896, 24, 14, 2, 4864, 151655, rope_theta=1e6, rms_eps=1e-6)
QWEN2_5_0_5B = LLMArch("qwen2", 896, 24, 14, 2, 4864, 151674, rope_theta=1e6, rms_eps=1e-6)
QWEN2_5_1_5B = LLMArch("qwen2", 1536, 28, 12, 2, 8960, 151674, rope_theta=1e6, rms_eps=1e-6)
QWEN2_5_7B = LLMArch("qwen2", 3584, 28, 28, 4, 18944, 151674, rope_theta=1e6, rms_eps=1e-6)
# Phi-3-mini-128k: longrope factors are per checkpoint; ones here (random-init builds only).
PHI3_MINI_128K = LLMArch("phi3", 3072, 32, 32, 32, 8192, 32020, rope_theta=1e4, max_positions=131072,
                         rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 48,
                                       "long_factor": [1.0] * 48, "factor": 32.0,
                                       "original_max_position_embeddings": 4096})
YI_34B = LLMArch("llama", 7168, 60, 56, 8, 20480, 64000, rope_theta=5e6, max_positions=8192)
LLAMA3_70B = LLMArch("llama", 8192, 80, 64, 8, 28672, 128265, rope_theta=5e5, max_positions=8192)

# The tiny model: the real token geometry (448-px tiles, patch 14, 256 tokens per tile) with very
# narrow layers, so CPU tests exercise every real code path in milliseconds.
TINY_VIT = VisionArch(32, 2, 2, 64, qkv_bias=True, norm="layer_norm", qk_norm=False)
TINY_LLM = LLMArch("qwen2", 64, 2, 4, 2, 128, 1024, rope_theta=1e4, max_positions=8192, rms_eps=1e-6)
# The demo model (workbench.demo): the same geometry and tokenizer, a few times wider and deeper so
# it can learn to ground shapes from scratch; still a few MB and instant on a CPU.
DEMO_VIT = VisionArch(128, 4, 4, 512, qkv_bias=True, norm="layer_norm", qk_norm=False)
DEMO_LLM = LLMArch("qwen2", 256, 4, 4, 2, 512, 1024, rope_theta=1e4, max_positions=4096, rms_eps=1e-6)
SMALL_ARCHS = {"tiny": (TINY_VIT, TINY_LLM), "demo": (DEMO_VIT, DEMO_LLM)}  # built by the project


@dataclass(frozen=True)
class Arch:
    vision: VisionArch
    llm: LLMArch
    image_token_id: int  # id of <IMG_CONTEXT>


ARCHS: dict[str, Arch] = {
    "internvl-chat-v1_5": Arch(VIT_6B, INTERNLM2_20B, 92546),
    "mini-internvl-chat-2b-v1_5": Arch(VIT_300M, INTERNLM2_1_8B, 92546),
    "mini-internvl-chat-4b-v1_5": Arch(VIT_300M, PHI3_MINI_128K, 32013),
    "internvl2-1b": Arch(VIT_300M, QWEN2_0_5B, 151648),
    "internvl2-2b": Arch(VIT_300M, INTERNLM2_1_8B, 92546),
    "internvl2-4b": Arch(VIT_300M, PHI3_MINI_128K, 32013),
    "internvl2-8b": Arch(VIT_300M, INTERNLM2_5_7B, 92546),
    "internvl2-26b": Arch(VIT_6B, INTERNLM2_20B, 92546),
    "internvl2-40b": Arch(VIT_6B, YI_34B, 64002),
    "internvl2-llama3-76b": Arch(VIT_6B, LLAMA3_70B, 128258),
    "internvl2_5-1b": Arch(VIT_300M, QWEN2_5_0_5B, 151667),
    "internvl2_5-2b": Arch(VIT_300M, INTERNLM2_1_8B, 92546),
    "internvl2_5-8b": Arch(VIT_300M, INTERNLM2_5_7B, 92546),
    "internvl3-1b": Arch(VIT_300M, QWEN2_5_0_5B, 151667),
    "internvl3-2b": Arch(VIT_300M, QWEN2_5_1_5B, 151667),
    "internvl3-8b": Arch(VIT_300M, QWEN2_5_7B, 151667),
}


def vision_config(v: VisionArch):
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    return InternVLVisionConfig(
        hidden_size=v.hidden, num_hidden_layers=v.layers, num_attention_heads=v.heads,
        intermediate_size=v.mlp, attention_bias=v.qkv_bias, norm_type=v.norm, use_qk_norm=v.qk_norm,
        layer_norm_eps=1e-6, image_size=448, patch_size=14,
    )


def text_config(t: LLMArch, vocab: int | None = None, **token_ids):
    from transformers import AutoConfig

    kwargs = dict(
        hidden_size=t.hidden, num_hidden_layers=t.layers, num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads, intermediate_size=t.mlp, vocab_size=vocab or t.vocab,
        max_position_embeddings=t.max_positions, rms_norm_eps=t.rms_eps, tie_word_embeddings=False,
        **token_ids,
    )
    rope = {"rope_type": "default", "rope_theta": t.rope_theta}
    if t.rope_scaling:
        rope = {**t.rope_scaling, "rope_theta": t.rope_theta}
    if t.model_type == "phi3":
        kwargs["original_max_position_embeddings"] = rope.pop("original_max_position_embeddings", 4096)
    kwargs["rope_parameters"] = rope
    return AutoConfig.for_model(t.model_type, **kwargs)


def build_config(arch_name: str, *, vocab: int | None = None, image_token_id: int | None = None, **token_ids):
    """The ``InternVLConfig`` of a known architecture (untied embeddings, as in the checkpoints)."""
    from transformers import InternVLConfig

    if arch_name not in ARCHS and arch_name not in SMALL_ARCHS:
        raise ModelNotFoundError(
            f"No built-in architecture for {arch_name!r}. Architectures: {', '.join(ARCHS)}. "
            "A native -hf checkpoint carries its own config: load it from its directory instead."
        )
    if arch_name in SMALL_ARCHS:
        (vis, llm), img_id = SMALL_ARCHS[arch_name], image_token_id if image_token_id is not None else 5
    else:
        a = ARCHS[arch_name]
        vis, llm, img_id = a.vision, a.llm, image_token_id if image_token_id is not None else a.image_token_id
    return InternVLConfig(
        vision_config=vision_config(vis), text_config=text_config(llm, vocab, **token_ids),
        image_token_id=img_id, tie_word_embeddings=False, downsample_ratio=0.5, vision_feature_layer=-1,
    )


def random_model(name: str, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "meta",
                 seed: int = 0):
    """A randomly initialised ``InternVLForConditionalGeneration`` with the exact architecture of a
    catalog entry or architecture name. ``device="meta"`` builds it without allocating weights."""
    from transformers import InternVLForConditionalGeneration

    from . import catalog

    spec = catalog.lookup(name)
    arch_name = spec.arch if spec else name
    if spec and spec.arch is None:
        raise ModelNotFoundError(
            f"{name!r} has no built-in architecture; its config comes with the checkpoint. "
            f"Built-in ones: {', '.join(ARCHS)}."
        )
    config = build_config(arch_name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config)
    return model.to(dtype)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
