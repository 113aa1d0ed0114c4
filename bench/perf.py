"""GPU performance of the workbench's own training step and chat against the naive path (issue 7).

    WORKBENCH_HOME=/tmp/wbh PYTHONPATH=. python3 bench/perf.py --out bench/results/perf-DATE-GPU.json

Everything runs in this one process on random-init models of the real architectures, bf16, and
every figure is set against the naive path measured here too (../shared/reference/gpu-baseline.md
gives its method): plain transformers + peft, sdpa, gradient checkpointing, batch 1, one sample of
7 tiles + 256 text tokens per step, transformers' own loss, AdamW.

The workbench side is what ``workbench.sft`` runs: the recipe's settings (recipes/<model>-lora.yaml)
through ``sft._trainable``, the frozen vision tower without autograd
(``packing.frozen_vision_without_autograd``), samples packed per step (``packing.PackingCollator``
and its attention), the loss with the head at answer positions only (``packing.loss``), in the bf16
autocast the Trainer's accelerate applies, AdamW. Trainer's own loop and
the data loader are left out of the step time; the data pipeline's rate (``data.encode`` of a
7-tile image) is measured on its own so one can see that loader workers keep up.

Chat is the session's path (``workbench.load`` + ``Conversation.stream``: processor, prefill, the
CUDA-graph decode of ``workbench.decode``), as loaded by default and with ``compile=True``, against
``generate`` with the dynamic cache on the same inputs. ``--quick`` measures fewer points (a smoke test). Results are written after every point.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import packing, sft  # noqa: E402
from workbench.architectures import build_config  # noqa: E402
from workbench.sft_config import SFTConfig  # noqa: E402

TILE_TOKENS, PATCHES_PER_TILE, TEXT_TOKENS = 256, 1025, 256
QUESTION = "<image>Describe the image in detail."  # every chat measurement asks this
DENSE_BF16_PEAK = 989e12  # H100/H200 SXM datasheet, dense bf16: the MFU denominator
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a smoke test of this script


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Sample:  # what data.encode returns, built directly: random text ids, the image's tokens
    def __init__(self, image_id, tiles, vocab, gen):
        n_img = tiles * TILE_TOKENS
        text = torch.randint(vocab // 10, vocab - vocab // 10, (TEXT_TOKENS,), generator=gen).tolist()  # clear of special ids
        self.input_ids = [image_id] * n_img + text
        self.labels = [-100] * n_img + text
        self.pixel_values = torch.randn(tiles, 3, 448, 448, generator=gen)


def build(arch: str):
    from transformers import InternVLForConditionalGeneration

    cfg = build_config(arch)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = InternVLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.config.text_config._attn_implementation = "sdpa"
    return model


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def step_fn(model, opt, batch, *, workbench: bool):
    """The naive step as gpu-baseline.md has it (bf16 weights, no autocast: peft's float32 adapters
    then multiply in float32); the workbench step as the recipe's Trainer runs it, in accelerate's
    bf16 autocast (``bf16: true``), with the packed loss."""
    def run():
        if workbench:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = packing.loss(model, batch)
        else:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def time_steps(run, warmup=3, steps=8) -> float:
    for _ in range(warmup):
        run()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return (time.perf_counter() - t0) / steps


def to_gpu(batch):
    return {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in batch.items()}


def gpu_batch(samples, *, workbench: bool):
    if workbench:
        b = packing.PackingCollator(0)(samples)
    else:
        b = sft.Collator(0)(samples)
        b.pop("answer_positions")  # the naive step is model(**batch) with transformers' loss
    b = to_gpu(b)
    b["pixel_values"] = b["pixel_values"].to(torch.bfloat16)
    return b


def measure_train(model, samples, *, workbench: bool, share: float, trainable, useful_per_sample):
    """One configuration: step time, tokens/s, samples/s, useful TFLOP/s, MFU, peak GiB. ``share``:
    of the language-model layers checkpointed (1 every one, 0 none; the workbench's
    ``packing.checkpoint_layers``, the recipe's ``checkpoint_share``)."""
    if share and workbench:
        packing.checkpoint_layers(model, share)
    elif share:  # the naive path: transformers' own, every layer
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    if share:
        model.enable_input_require_grads()
    packing.frozen_vision_without_autograd(model, enabled=workbench)  # the naive path back-propagates through it
    if workbench:
        packing.use_packed_attention(model)
    else:
        model.config.get_text_config()._attn_implementation = "sdpa"
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    batch = gpu_batch(samples, workbench=workbench)
    tokens = sum(len(s.input_ids) for s in samples)
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        dt = time_steps(step_fn(model, opt, batch, workbench=workbench))
    except torch.cuda.OutOfMemoryError:
        del opt, batch
        torch.cuda.empty_cache()
        return {"oom": True}
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    del opt, batch
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    useful = useful_per_sample * len(samples) / dt
    return {"step_s": round(dt, 4), "tokens_per_s": round(tokens / dt), "samples_per_s": round(len(samples) / dt, 2),
            "useful_tflops": round(useful / 1e12, 1), "mfu": round(useful / DENSE_BF16_PEAK, 3), "peak_gib": round(peak, 2)}


def train_arch(arch: str, results: dict, save, args) -> None:
    """The naive step, then packed steps of 1..8 samples with gradient checkpointing on every layer,
    on none, and (``--partial``) on a share of them; with ``--compile`` the packed steps run with
    compiled layers (``packing.compile_layers``, the recipe's ``compile: true``), measured after
    the one-time compile, whose time is recorded."""
    name = f"{arch}-lora.yaml" if (ROOT / "recipes" / f"{arch}-lora.yaml").exists() else "demo-lora.yaml"
    recipe = SFTConfig.from_yaml(ROOT / "recipes" / name, {"dataset": ["unused.jsonl"]})
    out = results.setdefault("train", {}).setdefault(arch, {"recipe": f"recipes/{name}"})
    gen = torch.Generator().manual_seed(0)

    for mode in args.modes:
        model = build(arch)
        cfg = recipe if mode == "lora" else SFTConfig.from_dict({**recipe.to_dict(), "sft_type": "full"})
        vocab = model.config.text_config.vocab_size
        img = model.config.image_token_id
        llm = params(model.model.language_model) + params(model.lm_head)
        vit = params(model.model.vision_tower)
        model = sft._trainable(model, cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        factor = 4 if mode == "lora" else 6  # frozen LLM: forward + input grads; full: + weight grads

        def useful(tiles):
            return factor * llm * (tiles * TILE_TOKENS + TEXT_TOKENS) + 2 * vit * tiles * PATCHES_PER_TILE

        rows = out.setdefault(mode, {})
        rows.update({"trainable_params": sum(p.numel() for p in trainable), "llm_params": llm, "vit_params": vit,
                     "lora_dropout": cfg.lora_dropout if mode == "lora" else None})
        runs = [(1.0, b) for b in args.batches] + [(0.0, b) for b in args.nogc] + [(s, b) for b, s in args.partial]
        pool = [Sample(img, 7, vocab, gen) for _ in range(max([2] + [b for _, b in runs]))]
        rows["naive"] = measure_train(model, pool[:1], workbench=False, share=1.0, trainable=trainable,
                                      useful_per_sample=useful(7))
        print(arch, mode, "naive", rows["naive"], flush=True)
        save()
        suffix = ""
        if args.compile:
            t0 = time.perf_counter()
            packing.compile_layers(model)
            measure_train(model, pool[:2], workbench=True, share=1.0, trainable=trainable,
                          useful_per_sample=useful(7))  # triggers (and so times) the compile
            rows["compile_s"] = round(time.perf_counter() - t0, 1)
            suffix = "_compiled"
        for share, b in runs:
            key = f"packed{b}_{'gc' if share == 1 else 'nogc' if share == 0 else f'gc{share:g}'}{suffix}"
            rows[key] = measure_train(model, pool[:b], workbench=True, share=share, trainable=trainable,
                                      useful_per_sample=useful(7))
            rows[key]["x_naive"] = _ratio(rows[key], rows["naive"])
            print(arch, mode, key, rows[key], flush=True)
            save()
        if mode == "lora" and args.tiles:  # growth with tiles: naive vs 4 packed, checkpointing on
            for tiles in (1, 4, 7, 13):
                few = [Sample(img, tiles, vocab, gen) for _ in range(4)]
                # after compile_layers the batch-1 row runs compiled layers too: not the naive path then
                for label, wb, b in ((f"batch1{suffix}" if suffix else "naive", False, 1), (f"packed4{suffix}", True, 4)):
                    rows[f"tiles{tiles}_{label}"] = measure_train(model, few[:b], workbench=wb, share=1.0,
                                                                  trainable=trainable, useful_per_sample=useful(tiles))
                save()
        del model, trainable
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def _pack_share(text: str) -> tuple[int, float]:
    b, _, s = text.partition(":")
    return int(b), float(s)


def _ratio(fast: dict, naive: dict):
    if "tokens_per_s" not in fast or "tokens_per_s" not in naive:
        return None
    return round(fast["tokens_per_s"] / naive["tokens_per_s"], 2)


def data_rate(results: dict, save) -> None:
    """Samples/s of the recipe's data path (data.encode: template, a 7-tile image) in one process."""
    from PIL import Image

    from workbench import data
    from workbench.tiny import ensure_built
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ensure_built())
    folder = Path(tempfile.mkdtemp())
    Image.new("RGB", (1344, 896), "teal").save(folder / "a.png")
    rows = [{"images": ["a.png"], "query": "<image>" + "What is this? " * 20, "response": "A picture. " * 60}] * 16
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    samples = data.load([folder / "d.jsonl"])
    data.encode(samples[0], proc, max_length=4096, max_tiles=6)
    t0 = time.perf_counter()
    for s in samples:
        data.encode(s, proc, max_length=4096, max_tiles=6)
    results["data_samples_per_s_per_worker"] = round(len(samples) / (time.perf_counter() - t0), 1)
    save()


def chat(results: dict, save, quick: bool) -> None:
    """InternVL2-2B shape: the session's chat (end to end) against generate with the dynamic cache."""
    from PIL import Image

    import workbench
    from chat_model import save_random_chat_model
    from workbench import decode

    work = save_random_chat_model()
    out = results.setdefault("chat", {"model": "internvl2-2b shape", "new_tokens": 128})
    images = {1: Image.new("RGB", (448, 448), "red"), 7: Image.new("RGB", (1344, 896), "red")}
    naive, naive_ids = {}, {}
    # the session as loaded by default, then with compile=True (the decode step compiled before
    # capture; its first answer pays the compile), then under a per-GPU budget
    for budget, comp in [(None, False), (None, True)] + ([] if quick else [("12GB", False)]):
        torch.cuda.reset_peak_memory_stats()
        s = workbench.load(work, name=f"2b-{budget}-{comp}", max_memory=[budget] if budget else None, compile=comp)
        decoder = decode.for_session(s)
        for tiles, img in images.items():
            key = f"{tiles}tile" + ("_compiled" if comp else "") + (f"_budget{budget}" if budget else "")
            runs = [_timed_ask(s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1), img, 128) for _ in range(6)]
            row = {"session_first": runs[0], "session": runs[-1], "decoder_mode": decoder.mode if decoder else None,
                   "compiled": bool(decoder and decoder.compiled),
                   "prefill_compiled": bool(decoder and decoder.prefill_compiled),
                   "ttft_s_median": sorted(r["ttft_s"] for r in runs[1:])[2],  # of the five after the first
                   "decode_tok_s_median": sorted(r["decode_tok_s"] for r in runs[1:])[2]}
            conv = s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1)
            turn = conv._prepare(QUESTION, [img], [], conv.settings)
            t0 = time.perf_counter()
            inputs = conv._inputs(turn)
            torch.cuda.synchronize()
            row["processor_s"] = round(time.perf_counter() - t0, 4)
            row["prompt_tokens"] = int(inputs["input_ids"].shape[1])
            if decoder is not None:  # the decoder alone from prepared inputs: prefill to the first token
                for _ in range(2):
                    torch.cuda.synchronize(); t0 = time.perf_counter()
                    decoder.generate(inputs, max_new_tokens=1, stop_ids=[], stop_event=threading.Event(),
                                     on_token=lambda t: None)
                    torch.cuda.synchronize()
                row["decoder_prefill_s"] = round(time.perf_counter() - t0, 4)
            if budget is None:
                if tiles not in naive:
                    naive[tiles], naive_ids[tiles] = _naive_generate(s.model, inputs)
                row["naive"] = naive[tiles]
                row["x_naive_decode"] = round(row["decode_tok_s_median"] / row["naive"]["decode_tok_s"], 2)
                row["x_naive_ttft"] = round(row["naive"]["ttft_s"] / row["ttft_s_median"], 2)
                if decoder is not None:  # greedy: the decoder's 128 tokens against generate's (True, or where they part)
                    got = decoder.generate(inputs, max_new_tokens=128, stop_ids=[], stop_event=threading.Event(),
                                           on_token=lambda t: None)[0].tolist()
                    want = naive_ids[tiles]
                    row["same_tokens_as_generate"] = got == want or next(
                        (i - row["prompt_tokens"] for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out[key] = row
            print("chat", key, json.dumps(row), flush=True)
            save()
        s.unload()


def _timed_ask(conv, img, n):
    t0 = time.perf_counter()
    first = None
    for _ in conv.stream(QUESTION, [img], max_new_tokens=n):
        if first is None:
            first = time.perf_counter() - t0
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    k = conv.turns[-1].answer_tokens
    return {"ttft_s": round(first, 4), "total_s": round(total, 3), "tokens": k,
            "decode_tok_s": round((k - 1) / (total - first), 1) if k > 1 else None}


def _naive_generate(model, inputs):
    """``generate`` with the dynamic cache and transformers' SDPA attention (the session's
    decoder switches the model to its own decode attention; switched back for this)."""
    text = model.config.get_text_config()
    chosen, text._attn_implementation = text._attn_implementation, "sdpa"
    try:
        return _naive_runs(model, inputs)
    finally:
        text._attn_implementation = chosen


def _naive_runs(model, inputs):
    """The timings, and the prompt and answer ids of the last 128-token answer."""
    res = {}
    for _ in range(2):  # the second of each is kept (the first warms up)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        torch.cuda.synchronize(); ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = model.generate(**inputs, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        torch.cuda.synchronize(); total = time.perf_counter() - t0
        k = int(ids.shape[1] - inputs["input_ids"].shape[1])
        res = {"ttft_s": round(ttft, 4), "total_s": round(total, 3), "tokens": k, "decode_tok_s": round((k - 1) / (total - ttft), 1)}
    return res, ids[0].tolist()


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return round(2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12, 1)


def main() -> None:
    import peft
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--archs", nargs="*", default=["internvl2-1b", "internvl2-2b", "internvl2-8b"])
    ap.add_argument("--quick", action="store_true", help="chat: no per-GPU-budget run")
    ap.add_argument("--modes", nargs="*", default=["lora", "full"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 2, 4, 8], help="packed samples per step, checkpointing on")
    ap.add_argument("--nogc", nargs="*", type=int, default=[1, 2, 4, 8], help="the same, checkpointing off")
    ap.add_argument("--partial", nargs="*", type=_pack_share, default=[], metavar="B:S",
                    help="B packed samples with a share S of the layers checkpointed (recipe: checkpoint_share)")
    ap.add_argument("--compile", action="store_true", help="packed steps with compiled layers (recipe: compile: true)")
    ap.add_argument("--tiles", action="store_true", help="LoRA step time at 1, 4, 7, 13 tiles")
    ap.add_argument("--merge", help="a results file of an earlier call to add these points to")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "chat", "data"])
    args = ap.parse_args()
    results = {"command": "python3 bench/perf.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
               "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "python": platform.python_version()} if DEVICE == "cuda" else {"device": "cpu"}
    if DEVICE == "cuda":
        results["matmul_bf16_tflops"] = matmul_rate()
    path = Path(args.out)
    if args.merge and Path(args.merge).exists():  # points measured by an earlier call, kept unless re-measured
        earlier = json.loads(Path(args.merge).read_text())
        results = {**earlier, **{k: v for k, v in results.items() if k not in ("command",)},
                   "command": earlier.get("command", "") + " ; " + results["command"]}

    def save():
        path.write_text(json.dumps(results, indent=1))

    save()
    if "chat" not in args.skip:
        chat(results, save, args.quick)
    if "train" not in args.skip:
        for arch in args.archs:
            train_arch(arch, results, save, args)
    if "data" not in args.skip:
        data_rate(results, save)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
