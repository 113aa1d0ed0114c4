"""The models users ask for by name, and the facts the workbench needs about each family.

A short name (``internvl2-2b``) maps to a hub id and a :class:`ModelSpec`: which language model
the family uses, its chat template and system prompt, whether images may appear in several turns,
and how many 448-px tiles an image is cut into by default. Architecture numbers (widths, layer
counts) live in :mod:`workbench.architectures`; the spec only names them.

Sources: ../shared/reference/architectures.md and the families' published configs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import ModelNotFoundError
from .templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM

DEFAULT_MODEL = "demo"  # the offline demo model (workbench.demo); "tiny" is the untrained one tests use


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str | None  # None: built by the project (the tiny and demo models)
    family: str  # internvl-chat-v1_5, mini-internvl-v1_5, internvl2, internvl2_5, internvl3, internvl3_5, tiny
    checkpoint_format: str  # "original" (remote-code InternVLChatModel) or "native" (transformers InternVL)
    llm_type: str  # language model as published: internlm2, qwen2, phi3, yi, llama3
    template: str  # a key of workbench.templates.STYLES
    system_prompt: str | None
    multi_turn_images: bool  # False: all images of a conversation must come in one turn
    max_tiles: int
    video: bool  # True: the family was trained with video frames
    arch: str | None = None  # a key of workbench.architectures.ARCHS (None: read from the checkpoint)
    quantized: str | None = None  # "int8": weights stored 8-bit (bitsandbytes)
    # What follows a lone image before the question when the user gives no <image> tag: InternVL's
    # chat code writes "<image>\n"; the demo model was trained on "<image>question" (synthetic data).
    image_sep: str = "\n"


def _orig(name, hub, family, llm, template, system, *, multi_turn, tiles, video, arch, quantized=None):
    return ModelSpec(name, hub, family, "original", llm, template, system, multi_turn, tiles, video, arch, quantized)


def _hf(name, hub, family, llm, *, tiles, arch=None):
    return ModelSpec(name, hub, family, "native", llm, "internvl2_5", INTERNVL2_5_SYSTEM, True, tiles, True, arch)


_SPECS = [
    ModelSpec("tiny", None, "tiny", "native", "qwen2", "internvl2_5", None, True, 6, True, "tiny"),
    # The demo model (workbench.demo): trained on synthetic shapes to ground them; one tile per image.
    ModelSpec("demo", None, "tiny", "native", "qwen2", "internvl2_5", None, True, 1, True, None, image_sep=""),
    # InternVL 1.5: images in one turn only; 12 tiles.
    _orig("internvl-chat-v1_5", "OpenGVLab/InternVL-Chat-V1-5", "internvl-chat-v1_5", "internlm2", "internlm2-chat",
          INTERNVL2_SYSTEM, multi_turn=False, tiles=12, video=False, arch="internvl-chat-v1_5"),
    _orig("internvl-chat-v1_5-int8", "OpenGVLab/InternVL-Chat-V1-5-Int8", "internvl-chat-v1_5", "internlm2",
          "internlm2-chat", INTERNVL2_SYSTEM, multi_turn=False, tiles=12, video=False, arch="internvl-chat-v1_5",
          quantized="int8"),
    _orig("mini-internvl-chat-2b-v1_5", "OpenGVLab/Mini-InternVL-Chat-2B-V1-5", "mini-internvl-v1_5", "internlm2",
          "internlm2-chat", INTERNVL2_SYSTEM, multi_turn=False, tiles=12, video=False, arch="mini-internvl-chat-2b-v1_5"),
    _orig("mini-internvl-chat-4b-v1_5", "OpenGVLab/Mini-InternVL-Chat-4B-V1-5", "mini-internvl-v1_5", "phi3",
          "phi3-chat", INTERNVL2_SYSTEM, multi_turn=False, tiles=12, video=False, arch="mini-internvl-chat-4b-v1_5"),
    # InternVL2: several images, across turns, and video frames; 6 tiles.
    _orig("internvl2-1b", "OpenGVLab/InternVL2-1B", "internvl2", "qwen2", "Hermes-2", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-1b"),
    _orig("internvl2-2b", "OpenGVLab/InternVL2-2B", "internvl2", "internlm2", "internlm2-chat", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-2b"),
    _orig("internvl2-4b", "OpenGVLab/InternVL2-4B", "internvl2", "phi3", "phi3-chat", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-4b"),
    _orig("internvl2-8b", "OpenGVLab/InternVL2-8B", "internvl2", "internlm2", "internlm2-chat", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-8b"),
    _orig("internvl2-26b", "OpenGVLab/InternVL2-26B", "internvl2", "internlm2", "internlm2-chat", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-26b"),
    _orig("internvl2-40b", "OpenGVLab/InternVL2-40B", "internvl2", "yi", "Hermes-2", INTERNVL2_SYSTEM,
          multi_turn=True, tiles=6, video=True, arch="internvl2-40b"),
    # The 76B's template name is read from its config on conversion; ChatML framing either way.
    _orig("internvl2-llama3-76b", "OpenGVLab/InternVL2-Llama3-76B", "internvl2", "llama3", "Hermes-2",
          INTERNVL2_SYSTEM, multi_turn=True, tiles=6, video=True, arch="internvl2-llama3-76b"),
    # Native-format checkpoints published for transformers' InternVL classes.
    _hf("internvl2_5-1b-mpo-hf", "OpenGVLab/InternVL2_5-1B-MPO-hf", "internvl2_5", "qwen2", tiles=6, arch="internvl2_5-1b"),
    _hf("internvl2_5-2b-mpo-hf", "OpenGVLab/InternVL2_5-2B-MPO-hf", "internvl2_5", "internlm2", tiles=6, arch="internvl2_5-2b"),
    _hf("internvl2_5-8b-mpo-hf", "OpenGVLab/InternVL2_5-8B-MPO-hf", "internvl2_5", "internlm2", tiles=6, arch="internvl2_5-8b"),
    _hf("internvl3-1b-hf", "OpenGVLab/InternVL3-1B-hf", "internvl3", "qwen2", tiles=12, arch="internvl3-1b"),
    _hf("internvl3-2b-hf", "OpenGVLab/InternVL3-2B-hf", "internvl3", "qwen2", tiles=12, arch="internvl3-2b"),
    _hf("internvl3-8b-hf", "OpenGVLab/InternVL3-8B-hf", "internvl3", "qwen2", tiles=12, arch="internvl3-8b"),
    _hf("internvl3-14b-hf", "OpenGVLab/InternVL3-14B-hf", "internvl3", "qwen2", tiles=12),
    _hf("internvl3-38b-hf", "OpenGVLab/InternVL3-38B-hf", "internvl3", "qwen2", tiles=12),
    _hf("internvl3-78b-hf", "OpenGVLab/InternVL3-78B-hf", "internvl3", "qwen2", tiles=12),
    _hf("internvl3_5-1b-hf", "OpenGVLab/InternVL3_5-1B-HF", "internvl3_5", "qwen3", tiles=12),
    _hf("internvl3_5-2b-hf", "OpenGVLab/InternVL3_5-2B-HF", "internvl3_5", "qwen3", tiles=12),
    _hf("internvl3_5-4b-hf", "OpenGVLab/InternVL3_5-4B-HF", "internvl3_5", "qwen3", tiles=12),
    _hf("internvl3_5-8b-hf", "OpenGVLab/InternVL3_5-8B-HF", "internvl3_5", "qwen3", tiles=12),
]

CATALOG: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
_BY_HUB_ID = {s.hub_id.lower(): s for s in _SPECS if s.hub_id}


def names() -> list[str]:
    return list(CATALOG)


def get(name: str) -> ModelSpec:
    """The spec of a short name (case-insensitive; ``_`` and ``-`` in V1-5/V1_5 both accepted)."""
    key = name.strip().lower()
    for candidate in (key, key.replace("v1-5", "v1_5")):
        if candidate in CATALOG:
            return CATALOG[candidate]
    close = difflib.get_close_matches(key, CATALOG, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelNotFoundError(
        f"Unknown model name {name!r}.{hint} Known names: {', '.join(CATALOG)}. "
        "You can also pass a hub id (e.g. 'OpenGVLab/InternVL3-1B-hf') or a local model directory."
    )


def lookup(name_or_hub_id: str) -> ModelSpec | None:
    """The spec for a short name or a known hub id, or None (no error) if it is neither."""
    key = name_or_hub_id.strip().lower()
    if key in CATALOG or key.replace("v1-5", "v1_5") in CATALOG:
        return get(key)
    return _BY_HUB_ID.get(key)
