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

import json
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
    """The demo model's directory: the committed one trained on the GPU (``assets/demo-model``),
    else the stop-gap model trained here on first use."""
    if (COMMITTED / "model.safetensors").exists():
        return COMMITTED
    return built_model(DEMO_VERSION, build)


# -- the synthetic-data demo model (issue 6) --------------------------------------------------------
#
# Reproduce (GPU, ~10 min):  python -m workbench.demo train --out runs/demo
# It writes the data (fixed seed), a random-init model of the "demo" architecture, launches the
# demo-train recipe as a background job (tracked in MLflow), evaluates the result on the held-out
# split and copies it to --out; `--install` copies it over assets/demo-model.

COMMITTED = Path(__file__).with_name("assets") / "demo-model"
DATA_SEED = 2026
TRAIN_SAMPLES = 40_000
HELDOUT_FIND = 300  # find-one questions on 1-4 shapes (single- and multi-object scores)
HELDOUT_DESCRIBE = 100
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo-train.yaml"


def make_data(folder: str | Path, *, seed: int = DATA_SEED, train: int = TRAIN_SAMPLES, workers: int = 1) -> dict:
    """Training data, a small validation set and the held-out evaluation sets."""
    from . import synthetic

    folder = Path(folder)
    cfg = synthetic.SyntheticConfig
    return {
        "train": synthetic.generate(folder, cfg(samples=train, seed=seed), split="train", workers=workers),
        "val": synthetic.generate(folder, cfg(samples=64, seed=seed), split="val", kind="find"),
        "heldout_find": synthetic.generate(folder, cfg(samples=HELDOUT_FIND, seed=seed), split="heldout-find",
                                           kind="find"),
        "heldout_describe": synthetic.generate(folder, cfg(samples=HELDOUT_DESCRIBE, seed=seed),
                                               split="heldout-describe", kind="describe"),
    }


def init_model(dest: str | Path, *, seed: int = 0) -> Path:
    """A random-init model of the demo architecture, with the tiny model's tokenizer and a
    one-tile processor: what demo training starts from."""
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration

    from .architectures import build_config
    from .tiny import build_processor, build_tokenizer

    dest = Path(dest)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, max_tiles=1)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = build_config("demo", vocab=len(tokenizer), image_token_id=tokenizer.context_image_token_id, **ids)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**ids, do_sample=False, max_new_tokens=64)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def evaluate(model_dir: str | Path, jsonl: str | Path, *, limit: int | None = None, batch: int = 16,
             device: str | None = None) -> dict:
    """The demo targets on a held-out file written by ``synthetic.generate``: Acc@0.5 of find-one
    answers on single-object and on 2–4-object images, and the share of "describe" answers that name
    exactly the shapes (colour and kind) in the image. Greedy answers, batched."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import data, grounding, media, synthetic

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()][:limit]
    samples = data.load([jsonl])[: len(rows)]
    answers: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = samples[start:start + batch]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": s.turns[-1][0].replace("<image>", "<IMG_CONTEXT>")}],
            add_generation_prompt=True, tokenize=False) for s in chunk]
        images = [media.load_image(s.images[0]) for s in chunk]
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += [t.split("<|im_end|>")[0] for t in processor.tokenizer.batch_decode(new, skip_special_tokens=False)]
    scores: dict[str, list] = {"single": [], "multi": [], "describe": []}
    for row, answer in zip(rows, answers):
        shapes = row["shapes"]
        if row["kind"] == "find":
            truth = next(s["box"] for s in shapes if s["caption"] == row["caption"])
            truth = grounding.to_norm_1000(truth, *_size(row, jsonl))
            boxes = grounding.parse(answer).boxes
            hit = bool(boxes) and grounding.iou(boxes[0][1], truth) >= 0.5
            scores["single" if len(shapes) == 1 else "multi"].append(hit)
        elif row["kind"] == "describe":
            scores["describe"].append(synthetic.mentioned(answer) == {(s["colour"], s["kind"]) for s in shapes})
    result = {f"{k}_acc": (sum(v) / len(v) if v else None) for k, v in scores.items()}
    result.update({f"{k}_n": len(v) for k, v in scores.items()})
    result["examples"] = [{"question": s.turns[-1][0], "answer": a} for s, a in zip(samples[:5], answers[:5])]
    return result


def _size(row: dict, jsonl) -> tuple[int, int]:
    from PIL import Image

    with Image.open(Path(jsonl).parent / row["images"][0]) as im:
        return im.size


def train(out: str | Path, *, data_dir: str | Path | None = None, workers: int = 8, samples: int = TRAIN_SAMPLES,
          init: str | Path | None = None, **overrides) -> dict:
    """The whole reproduction: data, init, the demo-train recipe as a background job, evaluation."""
    from . import jobs

    out = Path(out).resolve()
    data_dir = Path(data_dir or out / "data")
    files = make_data(data_dir, workers=workers, train=samples)
    init = Path(init) if init else init_model(out / "demo-init")  # `init`: continue from a trained model
    settings = dict(model=str(init), dataset=[str(files["train"])], val_dataset=[str(files["val"])],
                    output_dir=str(out / "run"), num_workers=workers, **overrides)
    job = jobs.launch(RECIPE, **settings)
    print(f"job {job.id}, MLflow run {job.run_id}; log: {job.dir / 'train.log'}", flush=True)
    state = job.wait()
    if state != "finished":
        raise RuntimeError(f"demo training {state}:\n{job.log_tail(40)}")
    final = job.output_dir / "final"
    scores = {"heldout_find": evaluate(final, files["heldout_find"]),
              "heldout_describe": evaluate(final, files["heldout_describe"])}
    scores["job"] = job.id
    scores["run_id"] = job.run_id
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m workbench.demo", description="Reproduce the demo model.")
    sub = p.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("train", help="data + init + the demo-train recipe + held-out evaluation")
    t.add_argument("--out", required=True)
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--train", type=int, default=TRAIN_SAMPLES, help="training samples to generate")
    t.add_argument("--init", default=None, help="start from this model folder instead of a random init")
    t.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    d = sub.add_parser("data", help="write the synthetic data only")
    d.add_argument("--out", required=True)
    d.add_argument("--train", type=int, default=TRAIN_SAMPLES)
    e = sub.add_parser("eval", help="held-out scores of a model folder")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="folder written by `data`")
    e.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    if args.verb == "train":
        from .sft_config import parse_overrides

        print(json.dumps(train(args.out, workers=args.workers, samples=args.train, init=args.init, **parse_overrides(args.set)), indent=1))
    elif args.verb == "data":
        print(make_data(args.out, train=args.train))
    else:
        folder = Path(args.data)
        print(json.dumps({"heldout_find": evaluate(args.model, folder / "heldout-find.jsonl", limit=args.limit),
                          "heldout_describe": evaluate(args.model, folder / "heldout-describe.jsonl", limit=args.limit)},
                         indent=1))
    return 0


# -- the new-concept story (issue 6): a CPU LoRA teaches the demo model a colour it never saw ------
#
# notebooks/new-concept.ipynb walks through it; tests/test_demo.py runs it. Until the synthetic-data
# model is the default ("demo"), the story starts from its latest training stage, bench/demo-start.

CONCEPT = "pink"  # not in the demo model's training colours (synthetic.NEW_COLOURS)
CONCEPT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo-new-concept.yaml"


def concept_data(folder: str | Path, *, train: int = 400, heldout: int = 24, seed: int = 7) -> dict:
    """Pictures of 1–3 shapes, one of them always pink, with questions about the pink one (and
    descriptions); the held-out split has 2–3 shapes, so finding the pink one takes the new word."""
    from . import synthetic

    folder = Path(folder)
    colours = (*synthetic.COLOURS, CONCEPT)
    cfg = synthetic.SyntheticConfig
    common = dict(seed=seed, colours=colours, require=CONCEPT, focus=CONCEPT)
    return {
        "train": synthetic.generate(folder, cfg(samples=train, min_objects=1, max_objects=3,
                                                questions={"find": 0.8, "describe": 0.2}, **common),
                                    split="concept-train"),
        "heldout": synthetic.generate(folder, cfg(samples=heldout, min_objects=2, max_objects=3, **common),
                                      split="concept-heldout", kind="find"),
    }


def teach_concept(model: str | Path, folder: str | Path, **overrides):
    """Launch the new-concept LoRA (recipes/demo-new-concept.yaml) as a background job on the data
    of :func:`concept_data`; returns the job. Each checkpoint's Acc@0.5 on the held-out pink
    questions is logged to MLflow (eval_grounding_acc50)."""
    from . import jobs

    files = concept_data(folder)
    return jobs.launch(CONCEPT_RECIPE, model=str(model), dataset=[str(files["train"])],
                       val_dataset=[str(files["heldout"])], **overrides)


if __name__ == "__main__":
    import sys

    sys.exit(main())
