"""A random-init InternVL2-2B-shaped model saved with the tiny model's processor, for the chat
benchmarks: its head is zeroed at eos/pad and at every id that does not decode to whole characters
by itself (a lone byte of a longer UTF-8 character), so greedy answers run their full length and
each token is text the moment it streams: the time to the first text is then the time to the first
token, whatever the random weights. Seeded, so every call measures the same model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def save_random_chat_model(arch: str = "internvl2-2b") -> Path:
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    from workbench.architectures import build_config
    from workbench.tiny import ensure_built

    proc = AutoProcessor.from_pretrained(ensure_built())
    tok = proc.tokenizer
    cfg = build_config(arch, image_token_id=tok.context_image_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = InternVLForConditionalGeneration(cfg).to(torch.bfloat16)
    texts = [tok.decode([i]) for i in range(len(tok))]
    silent = [i for i, text in enumerate(texts) if not text or "\ufffd" in text]
    with torch.no_grad():
        model.lm_head.weight[len(tok):] = 0
        model.lm_head.weight[[tok.eos_token_id, tok.pad_token_id, *silent]] = 0
    model.save_pretrained(work)
    proc.save_pretrained(work)
    del model
    torch.cuda.empty_cache()
    return work
