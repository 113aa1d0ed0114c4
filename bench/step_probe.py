"""Where a training step's and a decode step's GPU time goes, and what compiling more buys (issue 7).

    WORKBENCH_HOME=/tmp/wbh PYTHONPATH=. python3 bench/step_probe.py OUT_DIR

InternVL2-2B shape, random init, bf16, one GPU. Writes OUT_DIR/step_probe.json after every point and
OUT_DIR/*.txt profiler tables (top kernels by GPU time, top ops by host time).

1. The recipe's LoRA step (2 packed samples of 7 tiles + 256 text, checkpointing, compiled layers):
   wall time per phase (vision tower, forward + loss, backward, optimizer), and from the profiler
   the kernels per step, their summed GPU time, and so how much of the step the GPU is busy.
2. The vision tower alone at 7 and 14 tiles, eager and compiled (no autograd either way).
3. The decode step (``workbench.decode``): the trained demo model's grounding answer from generate
   and from the graph decoder, plain and compiled, on the capturing and the next turn; then the
   InternVL2-2B shape's step with SDPA attention, with ``decode_attention``, and compiled: tokens/s,
   replay time, kernels per step, tokens equal to generate's, the compile's and a regrowth's time.
4. ``levers``: the recipe's compiled LoRA step with one change at a time (bf16 autocast as the
   Trainer has it, the frozen vision tower without autograd, the attention inside the compiled
   graph), then 4 and 8 packed.
5. ``ttft``: the chat's time to first token split into processor, vision tower, prefill forward,
   the decoder's first token, and a profile of the last; what the user waits for end to end; then
   all of it again with the prefill compiled (``GraphDecoder.compile_prefill``, part of compile=True).
6. ``sampled``: the decoder's host-side path (repetition penalty, sampling) on the demo model
   against ``generate``.

    python3 bench/step_probe.py OUT_DIR levers      (or decode, train; several may be named)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from perf import QUESTION, Sample, build, gpu_batch, params, time_steps, _timed_ask  # noqa: E402
from workbench import packing, sft  # noqa: E402
from workbench.sft_config import SFTConfig  # noqa: E402


def sync():
    torch.cuda.synchronize()


def timed(fn, n=5, warm=2):
    return time_steps(fn, warmup=warm, steps=n)


def gpu_summary(prof, steps, out_dir, name, tables=True):
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    if not tables:  # the device tool brings back 8 files per call
        return {"kernels_per_step": round(len(kernels) / steps), "gpu_busy_ms_per_step": round(busy_us / steps / 1e3, 2)}
    (out_dir / f"{name}_gpu.txt").write_text(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40))
    (out_dir / f"{name}_cpu.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    return {"kernels_per_step": round(len(kernels) / steps), "gpu_busy_ms_per_step": round(busy_us / steps / 1e3, 2)}


def train(res, save, out_dir):
    recipe = SFTConfig.from_yaml(ROOT / "recipes" / "internvl2-2b-lora.yaml", {"dataset": ["unused.jsonl"]})
    model = build("internvl2-2b")
    res["vision_attn"] = model.config.vision_config._attn_implementation
    img = model.config.image_token_id
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(img, 7, model.config.text_config.vocab_size, gen) for _ in range(2)]
    packing.use_packed_attention(model)
    model = sft._trainable(model, recipe)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    batch = gpu_batch(samples, workbench=True)
    base = model.get_base_model()

    def step():
        packing.loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def phases(label):
        for _ in range(2):
            step()
        t = {"vision": 0.0, "forward_loss": 0.0, "backward": 0.0, "optimizer": 0.0}
        n = 4
        for _ in range(n):
            sync(); t0 = time.perf_counter()
            with torch.no_grad():
                base.model.get_image_features(pixel_values=batch["pixel_values"])
            sync(); t1 = time.perf_counter()
            loss = packing.loss(model, batch)
            sync(); t2 = time.perf_counter()
            loss.backward()
            sync(); t3 = time.perf_counter()
            opt.step(); opt.zero_grad(set_to_none=True)
            sync(); t4 = time.perf_counter()
            for k, a, b in (("vision", t0, t1), ("forward_loss", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4)):
                t[k] += (b - a) / n
        row = {k: round(v * 1e3, 1) for k, v in t.items()}
        row["step_ms"] = round(timed(step, n=5) * 1e3, 1)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            sync()
        row.update(gpu_summary(prof, 2, out_dir, f"train_{label}"))
        res.setdefault("train_2b_lora_packed2_gc", {})[label] = row
        print(label, row, flush=True)
        save()

    phases("eager")
    t0 = time.perf_counter()
    packing.compile_layers(model)
    step()
    res["compile_layers_s"] = round(time.perf_counter() - t0, 1)
    phases("compiled")

    # the vision tower alone, no autograd: eager vs compiled
    vt = base.model.vision_tower
    rows = {}
    for tiles in (7, 14):
        pv = torch.randn(tiles, 3, 448, 448, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            rows[f"{tiles}_eager_ms"] = round(timed(lambda: base.model.get_image_features(pixel_values=pv)) * 1e3, 2)
    t0 = time.perf_counter()
    vt.compile(dynamic=True)
    for tiles in (7, 14):
        pv = torch.randn(tiles, 3, 448, 448, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            rows[f"{tiles}_compiled_ms"] = round(timed(lambda: base.model.get_image_features(pixel_values=pv)) * 1e3, 2)
    rows["compile_s"] = round(time.perf_counter() - t0, 1)
    vit_flops = 2 * params(vt) * 1025
    rows["ideal_ms_per_tile_at_600tflops"] = round(vit_flops / 600e12 * 1e3, 2)
    res["vision_tower"] = rows
    print("vision", rows, flush=True)
    save()
    phases("compiled_vit")
    del model, opt, batch, base, vt
    torch.cuda.empty_cache()


@torch.inference_mode()
def _set_written(dec, n):
    """Put every static layer's write position at n (timing loops replay the step many times)."""
    for layer in dec.cache.layers:
        layer.cumulative_length.fill_(n)


def decode(res, save, out_dir):
    import threading

    from PIL import Image

    import workbench
    from chat_model import save_random_chat_model
    from workbench import decode as dec_mod
    from workbench import grounding
    from workbench.demo import ensure_built

    def gen(dec, inputs, n, stop_after=None):
        ev = threading.Event()
        seen = []

        def on_token(t):
            seen.append(t)
            if stop_after and len(seen) >= stop_after:
                ev.set()
        return dec.generate(inputs, max_new_tokens=n, stop_ids=[], stop_event=ev, on_token=on_token)

    def replay_ms(dec, n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _set_written(dec, n)
        for _ in range(10):
            dec.graph.replay()
        _set_written(dec, n)
        a.record()
        for _ in range(200):
            dec.graph.replay()
        b.record()
        sync()
        return round(a.elapsed_time(b) / 200, 3)

    # 1. the demo model (trained): the same grounding answer from generate and from each decoder
    demo = workbench.load(ensure_built(), name="demo")
    conv = demo.chat(log=False, trace=False)
    q = grounding.question("the red circle")
    turn = conv._prepare(q, [str(ROOT / "examples" / "demo-shapes.png")], [], conv.settings)
    inputs = conv._inputs(turn)
    n = inputs["input_ids"].shape[1]
    want = demo.model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, n:].tolist()
    checks = {"generate": demo.tokenizer.decode(want, skip_special_tokens=True)}
    for comp in (False, True):
        demo.model.config.get_text_config()._attn_implementation = "sdpa"
        dec = dec_mod.GraphDecoder(demo.model, compile=comp)
        for turn_no in range(2):  # the first turn captures; the second replays
            got = gen(dec, inputs, 40)[0, n:].tolist()
            got = got[: len(want)]
            checks[f"{'compiled' if comp else 'graph'}_turn{turn_no + 1}_same"] = got == want
    res["demo_answers"] = checks
    print("demo", checks, flush=True)
    save()
    demo.unload()

    # 2. InternVL2-2B shape: the step with SDPA attention, with decode_attention, and compiled
    work = save_random_chat_model()
    s = workbench.load(work, name="probe")
    img = Image.new("RGB", (1344, 896), "red")
    conv = s.chat(log=False, trace=False, max_tiles=6)
    turn = conv._prepare(QUESTION, [img], [], conv.settings)
    inputs = conv._inputs(turn)
    n = inputs["input_ids"].shape[1]
    text = s.model.config.get_text_config()
    naive = s.model.generate(**inputs, max_new_tokens=128, min_new_tokens=128, do_sample=False)[0, n:].tolist()
    rows = {"prompt_tokens": n}
    for label, comp in (("sdpa", False), ("decode_attention", False), ("decode_attention_compiled", True)):
        text._attn_implementation = "sdpa"
        dec = dec_mod.GraphDecoder(s.model, compile=comp)
        if label == "sdpa":
            text._attn_implementation = "sdpa"
        t0 = time.perf_counter()
        toks = gen(dec, inputs, 128)[0, n:].tolist()
        row = {"first_answer_s": round(time.perf_counter() - t0, 1)}
        same = next((i for i, (a, b) in enumerate(zip(toks, naive)) if a != b), len(naive))
        row["tokens_same_as_generate"] = same
        t = timed(lambda: gen(dec, inputs, 129), n=3, warm=1) - timed(lambda: gen(dec, inputs, 1), n=3, warm=1)
        row["decode_tok_s"] = round(128 / t, 1)
        row["graph_replay_ms"] = replay_ms(dec, 64)  # writes land inside the prompt: a timing loop only
        with torch.inference_mode():
            _set_written(dec, 64)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    dec._run()
                sync()
        row.update(gpu_summary(prof, 3, out_dir, f"decode_{label}"))
        if comp:  # a longer conversation: the cache grows, the step is compiled again for its length
            t0 = time.perf_counter()
            gen(dec, inputs, 2400, stop_after=4)
            row["regrow_s"] = round(time.perf_counter() - t0, 1)
            row["capacity_after"] = dec.capacity
        rows[label] = row
        print("decode", label, row, flush=True)
        res["decode"] = rows
        save()
        del dec
        torch.cuda.empty_cache()
    m = s.model
    with torch.inference_mode():
        rows["vision_7tile_ms"] = round(timed(lambda: m.model.get_image_features(pixel_values=inputs["pixel_values"])) * 1e3, 2)
    save()
    s.unload()


def levers(res, save, out_dir):
    """The recipe's compiled LoRA step (2B shape, 7 tiles + 256 text, checkpointing), one change at
    a time: as session 7 measured it (no autocast, so peft's float32 adapters ran float32 matmuls;
    the attention outside the compiled graph; autograd through the frozen vision tower), then in
    bf16 autocast as the Trainer runs it, then the frozen tower without autograd, then the attention
    inside the graph, with 2, 4 and 8 packed samples. Step time, tokens/s, host and GPU time,
    kernels, peak memory."""
    from transformers import AttentionInterface

    recipe = SFTConfig.from_yaml(ROOT / "recipes" / "internvl2-2b-lora.yaml", {"dataset": ["unused.jsonl"]})
    model = build("internvl2-2b")
    img, vocab = model.config.image_token_id, model.config.text_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    pool = [Sample(img, 7, vocab, gen) for _ in range(8)]
    packing.use_packed_attention(model)
    model = sft._trainable(model, recipe)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    out = res.setdefault("levers_2b_lora_gc_compiled", {})

    amp = {"on": False}

    def point(label, n, profiled=True):
        batch = gpu_batch(pool[:n], workbench=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp["on"]):
                loss = packing.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        dt = timed(step, n=6)
        row = {"samples": n, "first_step_s": round(first, 1), "step_ms": round(dt * 1e3, 1),
               "tokens_per_s": round(sum(len(x.input_ids) for x in pool[:n]) / dt),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        if profiled:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                sync()
            row.update(gpu_summary(prof, 2, out_dir, f"levers_{label}", tables=label.startswith("one_graph")))
            row["host_ms_per_step_profiled"] = round(prof.key_averages().self_cpu_time_total / 2 / 1e3, 1)
        out[label] = row
        print(label, row, flush=True)
        save()
        del batch

    # session 7: the attention a graph break in every layer, the frozen tower tracked by autograd
    AttentionInterface.register(packing.PACKED_ATTENTION, torch.compiler.disable(packing.packed_attention))
    packing.frozen_vision_without_autograd(model, enabled=False)
    packing.compile_layers(model)
    point("session7", 2)
    amp["on"] = True  # as the Trainer runs the recipe (bf16: accelerate's autocast); not a lever, the bench's fix
    point("autocast", 2)
    packing.frozen_vision_without_autograd(model)
    point("vision_no_grad", 2)
    torch._dynamo.reset()
    packing.register()  # the attention as workbench.packing has it now: traced inside the layer
    packing.compile_layers(model)
    point("one_graph", 2)
    for n in (4, 8):
        point(f"one_graph_packed{n}", n, profiled=n == 4)
    del model, opt
    torch.cuda.empty_cache()


def ttft(res, save, out_dir):
    """Time to first token of the session's chat (2B shape), split: processor, vision tower, the
    language model's prefill forward, the decoder's whole first token; and a profile of the latter
    at 7 tiles (host time against GPU busy time). Then the prefill through the compiled language
    model and vision tower (dynamic shapes) that ``compile=True`` brings, timed after its compile,
    the captured decode step unchanged."""
    import threading

    from PIL import Image

    import workbench
    from chat_model import save_random_chat_model
    from workbench import decode

    s = workbench.load(save_random_chat_model(), name="ttft")
    dec = decode.for_session(s)
    m = s.model
    rows = res.setdefault("ttft", {})
    images = ((1, Image.new("RGB", (448, 448), "red")), (7, Image.new("RGB", (1344, 896), "red")))

    def measure(label, profiled):
        for tiles, img in images:
            conv = s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1)
            turn = conv._prepare(QUESTION, [img], [], conv.settings)
            inputs = conv._inputs(turn)

            def first():
                dec.generate(inputs, max_new_tokens=1, stop_ids=[], stop_event=threading.Event(),
                             on_token=lambda t: None)

            t0 = time.perf_counter()
            first()
            sync()
            row = {"first_call_s": round(time.perf_counter() - t0, 2)}
            with torch.inference_mode():
                row.update({"prompt_tokens": int(inputs["input_ids"].shape[1]),
                            "processor_ms": round(timed(lambda: conv._inputs(turn), n=5) * 1e3, 2),
                            "vision_ms": round(timed(lambda: m.model.get_image_features(
                                pixel_values=inputs["pixel_values"])) * 1e3, 2)})
                if profiled:  # (not through compiled modules: use_cache=False would compile them once more)
                    row["prefill_forward_ms"] = round(timed(lambda: m(**inputs, logits_to_keep=1, use_cache=False)) * 1e3, 2)
            row["decoder_first_token_ms"] = round(timed(first, n=5) * 1e3, 2)
            if profiled:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(2):
                        first()
                    sync()
                row.update(gpu_summary(prof, 2, out_dir, f"ttft_{tiles}", tables=tiles == 7))
                row["host_ms_profiled"] = round(prof.key_averages().self_cpu_time_total / 2 / 1e3, 1)
            rows[f"{tiles}tile{label}"] = row
            print("ttft", tiles, label, row, flush=True)
            save()

    def end_to_end(label):
        """What the user waits for: Conversation.stream to its first text, split into the turn's
        preparation (images, template), the processor, and the worker's first piece; then a host
        profile of the caller's thread over one ask (the worker thread is the torch profile's)."""
        import cProfile
        import io
        import pstats

        for tiles, img in images:
            for _ in range(2):
                _first_text(s, tiles, img, 1)
            firsts, worker = zip(*(_first_text(s, tiles, img, 1) for _ in range(7)))
            conv = s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1)
            turn = conv._prepare(QUESTION, [img], [], conv.settings)
            row = {"first_text_ms_median": round(sorted(firsts)[3] * 1e3, 2), "first_text_ms_min": round(min(firsts) * 1e3, 2),
                   "worker_first_piece_ms_median": round(sorted(worker)[3] * 1e3, 2),
                   "prepare_ms": round(timed(lambda: conv._prepare(QUESTION, [img], [], conv.settings), n=5) * 1e3, 2),
                   "inputs_ms": round(timed(lambda: conv._inputs(turn), n=5) * 1e3, 2)}
            if tiles == 7:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(3):
                    _first_text(s, tiles, img, 1)
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(45)
                (out_dir / f"ttft_host{label}.txt").write_text(text.getvalue())
            rows[f"{tiles}tile_end_to_end{label}"] = row
            print("ttft end to end", tiles, label, row, flush=True)
            save()

    measure("", profiled=True)
    end_to_end("")
    dec.compile_prefill(True)  # what compile=True does (the captured decode step left as it is here)
    measure("_compiled_prefill", profiled=False)
    end_to_end("_compiled_prefill")
    s.unload()


def _first_text(s, tiles, img, n):
    """One question in a fresh conversation, answered with ``n`` tokens: seconds to its first text
    (processor and all, perf's ``_timed_ask``), and the worker's part of them."""
    conv = s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1)
    first = _timed_ask(conv, img, n)["ttft_s"]
    return first, conv.turns[-1].first_token_s


def ttft_compiled(res, save, out_dir):
    """A ``compile=True`` session as a user has it (decode step and prefill compiled): the first
    text of Conversation.stream for answers of 1 and of 128 tokens, and the decoder's first token
    from prepared inputs, each the median of 7 after the compiles (timed too)."""
    import threading

    from PIL import Image

    import workbench
    from chat_model import save_random_chat_model
    from workbench import decode

    s = workbench.load(save_random_chat_model(), name="ttft-compiled", compile=True)
    dec = decode.for_session(s)
    rows = res.setdefault("ttft_compile_true", {})
    for tiles, img in ((1, Image.new("RGB", (448, 448), "red")), (7, Image.new("RGB", (1344, 896), "red"))):
        t0 = time.perf_counter()
        _first_text(s, tiles, img, 128)
        row = {"first_ask_s": round(time.perf_counter() - t0, 1)}
        for n in (1, 128):
            times = sorted(_first_text(s, tiles, img, n)[0] for _ in range(7))
            row[f"first_text_ms_{n}_tokens"] = {"median": round(times[3] * 1e3, 2), "min": round(times[0] * 1e3, 2)}
        conv = s.chat(log=False, trace=False, max_tiles=6 if tiles > 1 else 1)
        inputs = conv._inputs(conv._prepare(QUESTION, [img], [], conv.settings))
        row["processor_ms"] = round(timed(lambda: conv._inputs(conv._prepare(QUESTION, [img], [], conv.settings)),
                                          n=7) * 1e3, 2)
        row["decoder_first_token_ms"] = round(timed(lambda: dec.generate(
            inputs, max_new_tokens=1, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None), n=7) * 1e3, 2)
        row.update(compiled=dec.compiled, prefill_compiled=dec.prefill_compiled, mode=dec.mode)
        rows[f"{tiles}tile"] = row
        print("ttft_compiled", tiles, row, flush=True)
        save()
    s.unload()


def sampled(res, save, out_dir):
    """The decoder's host-side path (a repetition penalty, sampling) on the trained demo model:
    greedy with a penalty against ``generate`` with the same penalty (plain and compiled decoder,
    the capturing turn and the next); sampling twice from one seed, and against ``generate``
    sampling from that seed; then a plain greedy answer, which must still equal generate's."""
    import threading

    import workbench
    from workbench import decode as dec_mod
    from workbench import grounding
    from workbench.demo import ensure_built

    def gen(dec, inputs, **kw):
        return dec.generate(inputs, max_new_tokens=40, stop_ids=stops, stop_event=threading.Event(),
                            on_token=lambda t: None, **kw)[0, n:].tolist()

    def same(a, b):
        """True when the two answers are the same tokens; else where they part."""
        return a == b or next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    demo = workbench.load(ensure_built(), name="demo")
    conv = demo.chat(log=False, trace=False)
    turn = conv._prepare(grounding.question("the red circle"), [str(ROOT / "examples" / "demo-shapes.png")], [],
                         conv.settings)
    inputs = conv._inputs(turn)
    n = inputs["input_ids"].shape[1]
    text = demo.model.config.get_text_config()
    eos = demo.model.generation_config.eos_token_id
    stops = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    rows = res.setdefault("sampled_path", {"max_new_tokens": 40})
    for comp in (False, True):
        text._attn_implementation = "sdpa"
        want_pen = demo.model.generate(**inputs, max_new_tokens=40, do_sample=False,
                                       repetition_penalty=1.3)[0, n:].tolist()
        want = demo.model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, n:].tolist()
        torch.manual_seed(7)
        want_sample = demo.model.generate(**inputs, max_new_tokens=40, do_sample=True, temperature=0.8, top_p=0.9,
                                          top_k=0)[0, n:].tolist()
        dec = dec_mod.GraphDecoder(demo.model, compile=comp)
        row = {}
        for turn_no in (1, 2):
            row[f"penalty_turn{turn_no}_same"] = same(gen(dec, inputs, repetition_penalty=1.3), want_pen)
        draws = []
        for _ in range(2):
            torch.manual_seed(7)
            draws.append(gen(dec, inputs, do_sample=True, temperature=0.8, top_p=0.9))
        row["sampled_twice_same"] = same(*draws)
        row["sampled_vs_generate_same"] = same(draws[0], want_sample)
        row["sampled_answer"] = demo.tokenizer.decode(draws[0], skip_special_tokens=True)
        row["greedy_after_same"] = same(gen(dec, inputs), want)
        row["answer_tokens"] = len(want)
        rows["compiled" if comp else "graph"] = row
        print("sampled", comp, row, flush=True)
        save()
    demo.unload()


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    path = out_dir / "step_probe.json"

    def save():
        path.write_text(json.dumps(res, indent=1))

    which = sys.argv[2:] or ["decode", "train"]
    if "levers" in which:
        levers(res, save, out_dir)
    if "ttft" in which:
        ttft(res, save, out_dir)
    if "ttft_compiled" in which:
        ttft_compiled(res, save, out_dir)
    if "sampled" in which:
        sampled(res, save, out_dir)
    if "train" in which and which[0] == "train":
        train(res, save, out_dir)
        which = [w for w in which if w != "train"]
    if "decode" in which:
        decode(res, save, out_dir)
    if "train" in which:
        train(res, save, out_dir)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
