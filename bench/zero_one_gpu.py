"""DeepSpeed ZeRO-2 LoRA and ZeRO-3 full fine-tunes through the background job path, on one GPU (issue 8).

    WORKBENCH_HOME=/tmp/wbh MLFLOW_TRACKING_URI=file:///tmp/mlruns PYTHONPATH=/tmp/site:. \\
        python3 bench/zero_one_gpu.py OUT.json [zero2] [zero3]

Carry `.whl` (MLflow skinny and what it needs, deepspeed built with DS_BUILD_OPS=0, hjson; see
bench/README.md) and install it to /tmp/site first. For each stage: ``jobs.launch`` of
recipes/demo-lora.yaml with ``deepspeed`` set (the demo model, examples/shapes-grounding.jsonl),
cancelled once its first checkpoint is written, resumed, and checked: one MLflow run, every step
logged once, the job finished, the final adapter or model saved. What multi-GPU runs need (several
processes, scaling, resuming on another count) this cannot show.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_stage(stage: str, sft_type: str) -> dict:
    import mlflow

    from workbench import jobs

    t0 = time.perf_counter()
    job = jobs.launch(ROOT / "recipes" / "demo-lora.yaml", dataset=[str(ROOT / "examples" / "shapes-grounding.jsonl")],
                      deepspeed=stage, sft_type=sft_type, max_steps=12, save_steps=6, logging_steps=1,
                      register_as=f"zero-{stage}-{sft_type}")
    row = {"command": job.record["command"]}
    while not job.checkpoints() and job.state in ("starting", "running") and time.perf_counter() - t0 < 240:
        time.sleep(1)
    row["first_checkpoint_s"] = round(time.perf_counter() - t0, 1)
    row["state_at_checkpoint"] = job.state
    if job.state != "running":
        row["log_tail"] = job.log_tail(60)
        return row
    job.cancel()
    row["cancelled"] = job.state
    row["checkpoints_before_resume"] = [p.name for p in job.checkpoints()]
    resumed = job.resume()
    row["final_state"] = resumed.wait(300)
    row["total_s"] = round(time.perf_counter() - t0, 1)
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(job.run_id, "loss")]
    row["loss_steps"] = sorted(steps)
    row["every_step_once"] = sorted(steps) == list(range(1, 13))
    run = client.get_run(job.run_id)
    row["mlflow_status"] = run.info.status
    row["runs_for_job"] = len(client.search_runs([run.info.experiment_id], f"tags.`workbench.job` = '{job.id}'"))
    final = job.output_dir / "final"
    row["final_files"] = sorted(p.name for p in final.iterdir()) if final.exists() else []
    system = [k for k in run.data.metrics if k.startswith("system/gpu")]
    row["gpu_system_metrics"] = sorted(system)[:6]
    samples = client.get_metric_history(job.run_id, "samples_per_s")
    row["samples_per_s_last"] = round(samples[-1].value, 2) if samples else None
    if row["final_state"] != "finished":
        row["log_tail"] = job.log_tail(60)
    return row


def main(out: str) -> None:
    import deepspeed
    import torch

    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "deepspeed": deepspeed.__version__}
    path = Path(out)
    chosen = sys.argv[2:] or ["zero2", "zero3"]
    for stage, sft_type in (("zero2", "lora"), ("zero3", "full")):
        if stage not in chosen:
            continue
        res[f"{stage}_{sft_type}"] = run_stage(stage, sft_type)
        path.write_text(json.dumps(res, indent=1))
        print(stage, sft_type, json.dumps(res[f"{stage}_{sft_type}"])[:1500], flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
