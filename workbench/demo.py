"""The offline demo model: the tiny InternVL taught, on this machine's CPU in about a minute, to
answer questions about the example image that ships with the package (``assets/shapes.png``).

It knows that one picture — where the red circle, the blue square and the green triangle are, and
how to describe them — so a newcomer's first minute shows a real grounded answer and the box
overlay with no download. It is not a general model: ask about another image and it answers as if
it were this one. (The synthetic-data demo model of issue 6 replaces it.)

Training is plain supervised fine-tuning of every weight on a fixed set of question/answer pairs,
loss on the answers only, with a fixed seed; the result is cached in ``home()/models/demo-v0`` and
written through a temporary folder, so a half-trained model is never picked up.
"""

from __future__ import annotations

from pathlib import Path

from .paths import built_model

DEMO_VERSION = "demo-v0"
EXAMPLE_IMAGE = Path(__file__).with_name("assets") / "shapes.png"
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "

# The objects of assets/shapes.png (640x480) with their pixel boxes (x1, y1, x2, y2).
OBJECTS = {
    "the red circle": (80, 120, 240, 280),
    "the blue square": (360, 200, 560, 400),
    "the green triangle": (340, 40, 500, 170),
}
DESCRIPTION = "The image shows a red circle on the left, a green triangle at the top and a blue square on the right."


def examples() -> list[tuple[str, str]]:
    """(question, answer) pairs the demo model learns; every question is about EXAMPLE_IMAGE."""
    from . import grounding

    pairs = []
    for label, box in OBJECTS.items():
        answer = grounding.format_ref(label, [grounding.to_norm_1000(box, 640, 480)])
        for question in (f"{GROUNDING_PROMPT}<ref>{label}</ref>", f"Where is {label}?", f"Find {label}.",
                         f"<ref>{label}</ref>"):
            pairs.append((question, answer))
    for question in ("Describe the image.", "What is in the picture?"):
        pairs.append((question, DESCRIPTION))
    return pairs


def build(dest: Path, *, steps: int = 400, seed: int = 0) -> Path:
    """Train the demo model from the tiny model and write it (weights, processor) into ``dest``."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .tiny import ensure_built

    base = ensure_built()
    processor = AutoProcessor.from_pretrained(base)
    # One 448-px tile per image: the demo answers about a single picture, and one tile keeps CPU
    # training and chat fast. Saved with the processor, so chat uses the same tiling.
    processor.image_processor.max_patches = 1
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")

    texts, prompt_lens = [], []
    for question, answer in examples():
        prompt = processor.apply_chat_template([{"role": "user", "content": "<IMG_CONTEXT>\n" + question}],
                                               add_generation_prompt=True, tokenize=False)
        texts.append(prompt + answer + "<|im_end|>")
        prompt_lens.append(len(processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]))
    processor.tokenizer.padding_side = "right"
    batch = processor(text=texts, images=[image] * len(texts), return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100  # loss on the answers (and their end marker) only

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    model.config._name_or_path = DEMO_VERSION
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def ensure_built() -> Path:
    """The demo model's directory, training it on first use."""
    return built_model(DEMO_VERSION, build)
