"""Where a chat token's time goes (issue 7): InternVL2-2B shape, random init, one GPU.

    WORKBENCH_HOME=/tmp/wbh PYTHONPATH=. python3 bench/decode_probe.py OUT.json

1. the captured decode step alone: graph replays timed with CUDA events (GPU time) and with a
   host clock and a sync per step (what the loop can reach at best);
2. ``GraphDecoder.generate`` with no streaming (on_token does nothing);
3. the session's ``Conversation.stream`` (streamer thread, text pieces);
4. 2 and 3 again with Python's thread switch interval at 0.1 ms instead of 5 ms;
5. the prefill split: vision tower + projector, then the language model's prefill.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import workbench  # noqa: E402
from workbench import decode  # noqa: E402
from chat_model import save_random_chat_model  # noqa: E402  (bench/, beside this file)


def host_timed(fn, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main(out: str) -> None:
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    work = save_random_chat_model()
    s = workbench.load(work, name="probe")
    img = Image.new("RGB", (1344, 896), "red")
    conv = s.chat(log=False, trace=False)
    conv.ask("<image>Describe the image in detail.", [img], max_new_tokens=16)  # capture + warm up
    dec = decode.for_session(s)
    turn = conv._prepare("<image>Describe the image in detail.", [img], [], conv.settings)
    inputs = conv._inputs(turn)
    ev = threading.Event()

    def gen(n=128):
        return dec.generate(inputs, max_new_tokens=n, stop_ids=[], stop_event=ev, on_token=lambda t: None)

    gen()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(100):
        dec.graph.replay()
    end.record()
    torch.cuda.synchronize()
    res["replay_gpu_ms"] = round(start.elapsed_time(end) / 100, 3)
    res["replay_sync_ms"] = round(host_timed(lambda: (dec.graph.replay(), torch.cuda.synchronize()), 100) * 1e3, 3)

    def rates(label):
        t = host_timed(lambda: gen(129), 3) - host_timed(lambda: gen(1), 3)
        res[f"{label}_decoder_tok_s"] = round(128 / t, 1)
        pieces = []
        for _ in range(2):
            c = s.chat(log=False, trace=False)
            t0 = time.perf_counter()
            first = None
            for _ in c.stream("<image>Describe the image in detail.", [img], max_new_tokens=128):
                first = first or time.perf_counter() - t0
            total = time.perf_counter() - t0
            pieces.append((c.turns[-1].answer_tokens - 1) / (total - first))
        res[f"{label}_stream_tok_s"] = round(pieces[-1], 1)

    rates("switch5ms")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    rates("switch0.1ms")
    sys.setswitchinterval(old)

    m = s.model
    pv = inputs["pixel_values"]
    res["vision_ms"] = round(host_timed(lambda: m.model.get_image_features(pixel_values=pv), 10) * 1e3, 2)
    res["prefill_ms"] = round(host_timed(lambda: gen(1), 10) * 1e3, 2)
    res["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    t0 = time.perf_counter()
    for _ in range(5):
        conv._inputs(turn)
    torch.cuda.synchronize()
    res["processor_ms"] = round((time.perf_counter() - t0) / 5 * 1e3, 2)
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
