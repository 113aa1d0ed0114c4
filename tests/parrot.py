"""A copy of the tiny model taught (by overfitting on CPU for a few seconds) to give one grounded
answer, so tests can see real <ref>/<box> tokens come out of a real model."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

QUESTION = "Where is the red circle?"
ANSWER = "<ref>the red circle</ref><box>[[125, 250, 375, 583]]</box>"


def build(tiny_dir: Path, dest: Path, image, steps: int = 150) -> Path:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if (dest / "model.safetensors").exists():
        return dest
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "<IMG_CONTEXT>\n" + QUESTION}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = prompt + ANSWER + "<|im_end|>"
    batch = processor(text=[full], images=[image], return_tensors="pt", max_patches=6)
    n_prompt = processor(text=[prompt], images=[image], return_tensors="pt", max_patches=6)["input_ids"].shape[1]
    labels = batch["input_ids"].clone()
    labels[:, :n_prompt] = -100  # loss on the answer only
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if loss.item() < 0.01:
            break
    model.eval()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(dest)
    return dest
