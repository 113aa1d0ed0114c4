"""GPU check of the session manager and chat engine (run on the GPU machine).

1. The tiny model on the GPU: chat through the session with the static-cache decode path, streaming
   and stop; then loaded with a per-GPU budget (the planner's device map) and chatted with.
2. A random-init InternVL2-2B shape saved to disk and loaded through ``workbench.load``: time to
   first token and decode tokens/s of the session's chat path (static cache) against the naive
   path (plain ``generate`` with the dynamic cache), in the same process.

Usage:  python bench/gpu_smoke.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

import workbench


def timed_ask(conv, text, images, n):
    t0 = time.perf_counter()
    first = None
    pieces = 0
    for _ in conv.stream(text, images, max_new_tokens=n):
        pieces += 1
        if first is None:
            first = time.perf_counter() - t0
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    turn = conv.turns[-1]
    return {"ttft_s": first, "total_s": total, "tokens": turn.answer_tokens,
            "decode_tok_s": (turn.answer_tokens - 1) / (total - first) if first and turn.answer_tokens > 1 else None}


def main(out_path: str) -> None:
    res: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    import transformers
    res["transformers"] = transformers.__version__
    img = Image.new("RGB", (1344, 896), "red")  # 6 tiles + thumbnail = 7 tiles

    # 1. tiny on GPU
    tiny = workbench.load(name="tiny-gpu")
    conv = tiny.chat(log=False)
    res["tiny_static_first"] = timed_ask(conv, "<image>Describe.", [img], 32)
    res["tiny_static_second"] = timed_ask(tiny.chat(log=False), "<image>Describe.", [img], 32)
    stream = conv.stream("More?", max_new_tokens=200)
    next(stream)
    conv.stop()
    list(stream)
    res["tiny_stop"] = {"stopped": conv.turns[-1].stopped, "tokens": conv.turns[-1].answer_tokens}
    tiny.unload()
    planned = workbench.load(max_memory=["2GB"], name="tiny-planned")
    res["tiny_planned_map_devices"] = sorted(set(map(str, planned.device_map.values())))
    planned_conv = planned.chat(log=False)
    planned_conv.ask("<image>Hi", [img], max_new_tokens=8)
    res["tiny_planned_answer_tokens"] = planned_conv.turns[-1].answer_tokens
    planned.unload()

    # 2. InternVL2-2B shape, random init, through workbench.load
    from chat_model import save_random_chat_model  # bench/, beside this file

    work = save_random_chat_model()
    s = workbench.load(work, name="2b")
    res["2b_load_mem_gib"] = torch.cuda.memory_allocated() / 2**30
    for label in ("first", "second", "third"):
        res[f"2b_session_static_{label}"] = timed_ask(s.chat(log=False), "<image>Describe the image in detail.", [img], 128)
    # naive path: same inputs, dynamic cache, plain generate (no eos stop: random weights)
    conv = s.chat(log=False)
    turn = conv._prepare("<image>Describe the image in detail.", [img], [], conv.settings)
    inputs = conv._inputs(turn)
    res["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    for label in ("warm", "timed"):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        s.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        torch.cuda.synchronize(); ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = s.model.generate(**inputs, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        torch.cuda.synchronize(); total = time.perf_counter() - t0
        res[f"2b_naive_dynamic_{label}"] = {"ttft_s": ttft, "total_s": total, "tokens": int(out.shape[1] - inputs["input_ids"].shape[1]),
                                            "decode_tok_s": 127 / (total - ttft)}
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    Path(out_path).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
