"""Where a demo-training step spends its time (issue 6): data loading alone vs the GPU step alone.

    PYTHONPATH=. python3 bench/demo_probe.py MODEL_DIR DATA.jsonl [OUT.json]
"""
import json
import sys
import time

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageTextToText, AutoProcessor

from workbench import data
from workbench.sft import Collator, SFTDataset


def main(model_dir, jsonl, out=None):
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = data.load([jsonl])[:6400]
    ds = SFTDataset(samples, processor, 512, 1, None)
    collate = Collator(processor.tokenizer.pad_token_id)
    result = {}
    for workers in (14,):
        loader = DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate, shuffle=True)
        it = iter(loader)
        next(it)
        t = time.time()
        for _ in range(40):
            batch = next(it)
        result[f"load_s_per_batch_w{workers}"] = (time.time() - t) / 40
    batch = {k: v.cuda() for k, v in batch.items() if k != "answer_positions"}  # model(**batch): transformers' loss
    for name, attn, tf32, amp in (("fp32-eager", "eager", False, False), ("fp32-sdpa", "sdpa", False, False),
                                  ("tf32-sdpa", "sdpa", True, False), ("bf16amp-sdpa", "sdpa", True, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32,
                                                            attn_implementation=attn).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for i in range(25):
            if i == 5:
                torch.cuda.synchronize()
                t = time.time()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize()
        result[f"step_s_{name}"] = (time.time() - t) / 20
        del model, opt
    print(json.dumps(result, indent=1))
    if out:
        open(out, "w").write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
