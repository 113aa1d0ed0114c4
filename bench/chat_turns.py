"""Does a multi-turn chat recompile the static-cache decode step every turn? (GPU machine)

Times each turn of one conversation whose prompt grows turn by turn, with the session's default
decode path and, for comparison, with the dynamic cache (the script swaps the decode-kwargs
function to measure the alternative in the same process).

Usage:  python bench/chat_turns.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

import workbench
from workbench import chat


def turns(session, label):
    conv = session.chat(log=False)
    img = Image.new("RGB", (896, 448), "red")
    rows = []
    for i, q in enumerate(["<image>Describe.", "More detail please.", "And the colours?", "Anything else at all?", "Last one."]):
        t0 = time.perf_counter()
        conv.ask(q, [img] if i == 0 else [], max_new_tokens=24 + 8 * i)
        torch.cuda.synchronize()
        rows.append({"turn": i + 1, "prompt_tokens": conv.turns[-1].prompt_tokens, "seconds": time.perf_counter() - t0})
    return {label: rows}


def main(out: str) -> None:
    s = workbench.load(name="tiny-turns")
    res = {}
    res.update(turns(s, "static_default"))
    original = chat._fast_decode_kwargs
    chat._fast_decode_kwargs = lambda session: {}
    res.update(turns(s, "dynamic"))
    chat._fast_decode_kwargs = original
    Path(out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
