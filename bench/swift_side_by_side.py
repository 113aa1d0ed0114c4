"""ms-swift's ``sft`` against the workbench's fine-tune on the same random-init model and data (issue 7).

    WORKBENCH_HOME=/tmp/wbh MLFLOW_TRACKING_URI=file:///tmp/mlruns PYTHONPATH=/tmp/site:.:bench \\
        python3 bench/swift_side_by_side.py OUT.json

Carry `.whl` with ms-swift 4.6 and what it needs that the GPU machine lacks (bench/README.md) and
install it to /tmp/site first. One InternVL2-2B-shaped model (random init, the tiny processor),
64 samples of one 1344x896 image (7 tiles) and a ~256-token answer, in ms-swift's own ``messages``
format. Both run LoRA r 8 / alpha 32 on every language-model linear, vision tower frozen,
checkpointing, bf16, 60 steps, each as its users start it: ``swift sft`` (batch 1, its defaults)
and a workbench background job of recipes/internvl2-2b-lora.yaml as it stands (4 samples packed
per step, compiled layers). Steady-state rates only: steps 20-60 for swift (from its cumulative
``train_speed(s/it)``), the median of the job's logged samples/s after step 20 for the workbench
(so the one-time compile is left out; its wall time is in ``workbench_wall_s``).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = 60
LOG_EVERY = 20
SWIFT_EXTRA: list[str] = []  # a CPU dry run of this script adds --use_cpu true --torch_dtype float32


def make_data(folder: Path, tokenizer) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(896, 1344, 3, generator=gen) * 255).byte().numpy()).save(folder / "a.png")
    words = "the red circle sits left of a blue square and a green triangle above them".split()
    answer = ""
    i = 0
    while len(tokenizer(answer)["input_ids"]) < 256:
        answer += words[i % len(words)] + " "
        i += 1
    rows = [{"messages": [{"role": "user", "content": "<image>Describe the picture in detail."},
                          {"role": "assistant", "content": answer.strip()}],
             "images": [str(folder / "a.png")]}] * 64
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_swift(model: Path, data: Path, out: Path, res: dict) -> None:
    cmd = [sys.executable, "-m", "swift.cli.sft", "--model", str(model), "--model_type", "internvl",
           "--dataset", str(data), "--tuner_type", "lora", "--lora_rank", "8", "--lora_alpha", "32",
           "--target_modules", "all-linear", "--freeze_vit", "true", "--torch_dtype", "bfloat16",
           "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--max_steps", str(STEPS),
           "--gradient_checkpointing", "true", "--max_length", "4096", "--attn_impl", "sdpa", "--logging_steps", str(LOG_EVERY),
           "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "4", "--split_dataset_ratio", "0",
           "--output_dir", str(out), "--learning_rate", "1e-4", *SWIFT_EXTRA]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    res["swift_wall_s"] = round(time.perf_counter() - t0, 1)
    log = p.stdout + p.stderr
    (out.parent / "swift.log").write_text(log[-200000:])
    res["swift_rc"] = p.returncode
    speeds = {int(m.group(1)): float(m.group(2)) for m in
              re.finditer(r"'global_step/max_steps': '(\d+)/\d+'.*?'train_speed\(s/it\)': '?([0-9.]+)", log)}
    res["swift_speeds"] = speeds
    if LOG_EVERY in speeds and STEPS in speeds:
        step_s = (speeds[STEPS] * STEPS - speeds[LOG_EVERY] * LOG_EVERY) / (STEPS - LOG_EVERY)
        res["swift_step_s"] = round(step_s, 4)
        res["swift_samples_per_s"] = round(1 / step_s, 2)
    else:
        res["swift_log_tail"] = log[-3000:]


def run_workbench(model: Path, data: Path, res: dict) -> None:
    import mlflow

    from workbench import jobs

    t0 = time.perf_counter()
    job = jobs.launch(ROOT / "recipes" / "internvl2-2b-lora.yaml", model=str(model), dataset=[str(data)],
                      max_steps=STEPS, val_split=0.0, save_steps=10000, logging_steps=1, grad_accum=1, num_workers=4)
    state = job.wait(400)  # the recipe's compile: true pays its one-time compile in the first steps
    res["workbench_wall_s"] = round(time.perf_counter() - t0, 1)
    res["workbench_state"] = state
    hist = mlflow.MlflowClient().get_metric_history(job.run_id, "samples_per_s")
    late = [m.value for m in hist if m.step > 20]
    if late:
        res["workbench_samples_per_s"] = round(statistics.median(late), 2)
    if state != "finished":
        res["workbench_log_tail"] = job.log_tail(40)


def main(out: str) -> None:
    from chat_model import save_random_chat_model
    from transformers import AutoProcessor

    res: dict = {"gpu": torch.cuda.get_device_name(0), "steps": STEPS}
    path = Path(out)
    model = save_random_chat_model("internvl2-2b")
    data = make_data(Path("/tmp/sbs"), AutoProcessor.from_pretrained(model).tokenizer)
    try:
        import swift

        res["ms_swift"] = getattr(swift, "__version__", "?")
        run_swift(model, data, Path("/tmp/sbs/swift-out"), res)
    except Exception as exc:  # noqa: BLE001 — reported, then the workbench side still runs
        res["swift_error"] = repr(exc)[:2000]
    path.write_text(json.dumps(res, indent=1))
    run_workbench(model, data, res)
    if res.get("swift_samples_per_s") and res.get("workbench_samples_per_s"):
        res["workbench_over_swift"] = round(res["workbench_samples_per_s"] / res["swift_samples_per_s"], 2)
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if "tail" not in k}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
