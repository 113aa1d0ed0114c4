"""The offline demo model: a small InternVL trained from scratch on synthetic shapes
(:mod:`workbench.synthetic`) by the project's own recipe and background-job path, on a GPU, and
committed in ``assets/demo-model`` (about 13 MB, bf16). It is the default model when none is named.

It grounds coloured shapes — circles, squares, triangles and stars in six colours — on 448-px
pictures of 1–4 shapes, asked the way its training data asks (InternVL's grounding prompt):

- "Please provide the bounding box coordinate of the region this sentence describes:
  <ref>the red circle</ref>" → ``<ref>the red circle</ref><box>[[x1, y1, x2, y2]]</box>``;
- "Find all the circles." → one ref, several boxes;   "Describe the image." → the shapes, left to right;
- "What is at <box>[[…]]</box>?" → the caption.

It knows nothing else: it is there so a newcomer's first minute shows real grounding with no
download, and so fine-tunes and checkpoint comparisons have a model worth comparing (the
new-concept story below). Held-out scores, the lineage of its training stages and the commands
that reproduce them: README ("The demo model") and bench/results/demo_train-*.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelNotFoundError

COMMITTED = Path(__file__).with_name("assets") / "demo-model"
EXAMPLE_IMAGE = Path(__file__).with_name("assets") / "demo-shapes.png"  # also examples/demo-shapes.png
# The objects of assets/demo-shapes.png (448x448, drawn by workbench.synthetic) with their pixel boxes.
OBJECTS = {
    "the red circle": (60, 120, 170, 230),
    "the blue square": (260, 250, 380, 370),
    "the green triangle": (250, 50, 360, 160),
}


def ensure_built() -> Path:
    """The demo model's folder (committed with the package)."""
    if not (COMMITTED / "model.safetensors").exists():
        raise ModelNotFoundError(f"The demo model is missing from {COMMITTED}: reinstall the package, or "
                                 "restore it with `git checkout -- workbench/assets/demo-model`.")
    return COMMITTED


def example_image() -> Path:
    """(Re)draw assets/demo-shapes.png from OBJECTS with the synthetic renderer (what the demo saw in training)."""
    import random

    from . import synthetic

    shapes = [synthetic.Shape(caption.split()[-1], caption.split()[1], box, caption) for caption, box in OBJECTS.items()]
    synthetic.render(shapes, random.Random(0), synthetic.SyntheticConfig(clutter=0.0)).save(EXAMPLE_IMAGE)
    return EXAMPLE_IMAGE


# -- reproducing it (GPU) ---------------------------------------------------------------------------
#
#   python -m workbench.demo train --out runs/demo [--init FOLDER] [--hard 0.5] [--set key=value ...]
# writes the data (fixed seed), a random-init model of the "demo" architecture (or starts from
# --init), launches the demo-train recipe as a background job (tracked in MLflow) and evaluates the
# result on the held-out split. `grow` deepens a trained model between stages.

DATA_SEED = 2026
TRAIN_SAMPLES = 40_000
HELDOUT_FIND = 300  # find-one questions on 1-4 shapes (single- and multi-object scores)
HELDOUT_DESCRIBE = 100
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo-train.yaml"


def make_data(folder: str | Path, *, seed: int = DATA_SEED, train: int = TRAIN_SAMPLES, workers: int = 1,
              hard: float = 0.0) -> dict:
    """Training data (``hard``: the share of hard multi-shape cases, see SyntheticConfig), a small
    validation set and the held-out evaluation sets (always the plain mix)."""
    from . import synthetic

    folder = Path(folder)
    cfg = synthetic.SyntheticConfig
    return {
        "train": synthetic.generate(folder, cfg(samples=train, seed=seed, hard=hard), split="train", workers=workers),
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


def grow(src: str | Path, dest: str | Path, *, text_layers: int, vision_layers: int, seed: int = 0) -> Path:
    """A deeper copy of a trained demo model that answers exactly as it did: each added layer sits
    after an old one and starts as the identity (language layers: zero output projections, so
    attention and MLP add nothing; vision layers: zero layer scales). Training then uses the new
    depth; the earlier stages' learning is kept. The held-out misses of the 4-layer model were
    bindings (right kind, wrong colour) that more steps on fresh data did not move: capacity."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    src, dest = Path(src), Path(dest)
    old = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    config = old.config
    n_text, n_vision = config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers
    if text_layers < n_text or vision_layers < n_vision:
        raise ValueError(f"grow adds layers: the model has {n_text} language and {n_vision} vision layers; "
                         f"ask for at least that many (got {text_layers} and {vision_layers}).")
    config.text_config.num_hidden_layers = text_layers
    config.text_config.layer_types = [config.text_config.layer_types[0]] * text_layers
    config.vision_config.num_hidden_layers = vision_layers
    torch.manual_seed(seed)
    new = type(old)(config)
    new.generation_config = old.generation_config
    moves = (("language_model.layers.", _spread(n_text, text_layers)), ("encoder.layer.", _spread(n_vision, vision_layers)))
    state = {}
    for key, value in old.state_dict().items():
        for part, mapping in moves:
            if part in key:
                head, rest = key.split(part)
                i, tail = rest.split(".", 1)
                key = f"{head}{part}{mapping[int(i)]}.{tail}"
        state[key] = value
    fresh = new.state_dict()
    for key in fresh:
        if key not in state:  # a new layer's weight: random, but its output path starts at zero
            if key.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight", "lambda_1", "lambda_2")):
                state[key] = torch.zeros_like(fresh[key])
            else:
                state[key] = fresh[key]
    new.load_state_dict(state, strict=True)
    new.config._name_or_path = f"{src.name}-grown"
    dest.mkdir(parents=True, exist_ok=True)
    new.save_pretrained(dest)
    AutoProcessor.from_pretrained(src).save_pretrained(dest)
    return dest


def export_bf16(checkpoint: str | Path, dest: str | Path, *, processor_from: str | Path | None = None) -> Path:
    """A training checkpoint (fp32 master weights) as a model folder in bf16 with its processor:
    what one stage hands to the next, and what is committed. ``processor_from``: where the
    processor files are when the checkpoint has none (Trainer checkpoints keep only weights)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.bfloat16).save_pretrained(dest)
    AutoProcessor.from_pretrained(processor_from or checkpoint).save_pretrained(dest)
    return Path(dest)


def _spread(old: int, new: int) -> dict[int, int]:
    """Where old layer i goes among ``new`` layers, the added ones spread between them:
    4 → 8 gives 0, 2, 4, 6; 4 → 6 gives 0, 2, 4, 5 (each old layer keeps its order)."""
    extra = new - old
    positions, at = {}, 0
    for i in range(old):
        positions[i] = at
        at += 1 + (1 if i < extra % old else 0) + extra // old
    return positions


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
    by_count: dict[int, list] = {}
    for row, answer in zip(rows, answers):
        shapes = row["shapes"]
        if row["kind"] == "find":
            truth = next(s["box"] for s in shapes if s["caption"] == row["caption"])
            truth = grounding.to_norm_1000(truth, *_size(row, jsonl))
            boxes = grounding.parse(answer).boxes
            hit = bool(boxes) and grounding.iou(boxes[0][1], truth) >= 0.5
            scores["single" if len(shapes) == 1 else "multi"].append(hit)
            by_count.setdefault(len(shapes), []).append(hit)
        elif row["kind"] == "describe":
            scores["describe"].append(synthetic.mentioned(answer) == {(s["colour"], s["kind"]) for s in shapes})
    result = {f"{k}_acc": (sum(v) / len(v) if v else None) for k, v in scores.items()}
    result.update({f"{k}_n": len(v) for k, v in scores.items()})
    if by_count:  # find-one Acc@0.5 by shapes in the picture
        result["acc_by_shapes"] = {n: round(sum(v) / len(v), 3) for n, v in sorted(by_count.items())}
    result["examples"] = [{"question": s.turns[-1][0], "answer": a} for s, a in zip(samples[:5], answers[:5])]
    return result


def _size(row: dict, jsonl) -> tuple[int, int]:
    from PIL import Image

    with Image.open(Path(jsonl).parent / row["images"][0]) as im:
        return im.size


def train(out: str | Path, *, data_dir: str | Path | None = None, workers: int = 8, samples: int = TRAIN_SAMPLES,
          init: str | Path | None = None, hard: float = 0.0, **overrides) -> dict:
    """The whole reproduction: data, init, the demo-train recipe as a background job, evaluation."""
    from . import jobs

    out = Path(out).resolve()
    data_dir = Path(data_dir or out / "data")
    files = make_data(data_dir, workers=workers, train=samples, hard=hard)
    init = Path(init) if init else init_model(out / "demo-init")  # `init`: continue from a trained model
    settings = dict(model=str(init), dataset=[str(files["train"])], val_dataset=[str(files["val"])],
                    output_dir=str(out / "run"), **{"num_workers": workers, **overrides})
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
    t.add_argument("--hard", type=float, default=0.0, help="share of hard multi-shape training pictures")
    t.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    d = sub.add_parser("data", help="write the synthetic data only")
    d.add_argument("--out", required=True)
    d.add_argument("--train", type=int, default=TRAIN_SAMPLES)
    g = sub.add_parser("grow", help="a deeper copy of a trained model that answers the same (added layers start as identity)")
    g.add_argument("model")
    g.add_argument("dest")
    g.add_argument("--text-layers", type=int, required=True)
    g.add_argument("--vision-layers", type=int, required=True)
    x = sub.add_parser("bf16", help="a training checkpoint as a bf16 model folder with its processor")
    x.add_argument("checkpoint")
    x.add_argument("dest")
    x.add_argument("--processor-from", default=None, help="a folder with the processor, if the checkpoint has none")
    e = sub.add_parser("eval", help="held-out scores of a model folder")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="folder written by `data`")
    e.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    if args.verb == "train":
        from .sft_config import parse_overrides

        print(json.dumps(train(args.out, workers=args.workers, samples=args.train, init=args.init, hard=args.hard,
                               **parse_overrides(args.set)), indent=1))
    elif args.verb == "grow":
        print(grow(args.model, args.dest, text_layers=args.text_layers, vision_layers=args.vision_layers))
    elif args.verb == "bf16":
        print(export_bf16(args.checkpoint, args.dest, processor_from=args.processor_from))
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
# notebooks/new-concept.ipynb walks through it; tests/test_demo.py runs it, from the default demo model.

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
