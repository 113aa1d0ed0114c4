"""The int8 InternVL-Chat-V1.5 path on a GPU (issue 5): a tiny int8 checkpoint in the original layout
(the one tests/test_convert.py builds) → ``workbench.load()`` → an 8-bit bitsandbytes model.

Checks that the language model's linear layers are bitsandbytes int8 layers whose int8 rows are the
checkpoint's own, compares the logits with the reference forward pass of the original layout, and
runs one chat turn.

    WORKBENCH_HOME=/tmp/wbh PYTHONPATH=.:tests python3 bench/int8_gpu.py OUT.json
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import test_convert as T
import workbench
from workbench import tiny


def main(out: str) -> None:
    tok_dir = tiny.ensure_built()  # a tokenizer that loads natively, with InternVL's specials
    vocab = json.loads((tok_dir / "config.json").read_text())["text_config"]["vocab_size"]
    image_id = 5  # <IMG_CONTEXT> in the tiny tokenizer
    root = Path(tempfile.mkdtemp())
    config, stored, dequantized, linear = T.write_int8(root / "orig", vocab_size=vocab)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, root / "orig" / name)

    t = time.time()
    session = workbench.load(root / "orig", name="int8")
    result = {"load_s": round(time.time() - t, 2), "dtype": str(session.dtype),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import bitsandbytes as bnb
    import transformers

    result |= {"bitsandbytes": bnb.__version__, "transformers": transformers.__version__}
    llm = session.model.model.language_model
    int8_layers = [n for n, m in llm.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    result["llm_int8_layers"] = len(int8_layers)
    result["vision_int8_layers"] = sum(isinstance(m, bnb.nn.Linear8bitLt) for m in session.model.model.vision_tower.modules())
    pairs = {"language_model.model.layers.0.attention.wo.weight": llm.layers[0].self_attn.o_proj,
             "language_model.model.layers.1.feed_forward.w2.weight": llm.layers[1].mlp.down_proj}
    result["int8_rows_equal_checkpoint"] = {
        key: bool(torch.equal(module.weight.data.cpu(), stored[key])) for key, module in pairs.items()}

    T.IMG_CONTEXT = image_id
    ids = torch.tensor([[1, 7, 9] + [image_id] * 256 + [11, 13, 4]])
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = session.model(input_ids=ids.cuda(), pixel_values=pixels.cuda().to(session.dtype)).logits[0].float().cpu()
    ref = T.reference_logits(config, {k: v.half().float() for k, v in dequantized.items()}, ids[0], pixels)
    result["logits_vs_reference"] = {
        "max_abs_diff": float((got - ref).abs().max()), "ref_abs_max": float(ref.abs().max()),
        "relative_l2": float((got - ref).norm() / ref.norm()),
        "argmax_agree": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
    conv = session.chat()
    answer = conv.ask("<image>Describe the image.", ["examples/shapes.png"], max_new_tokens=16)
    result["chat_answer_chars"] = len(answer)
    result["gpu_memory_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    print(json.dumps(result, indent=1))
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
