"""``workbench sft``: run a fine-tune recipe as a background job and follow it.

    workbench sft --config recipes/demo-lora.yaml
    workbench sft --model demo --dataset train.jsonl --sft-type lora --max-steps 100 --detach

Flags override the recipe. Without ``--detach`` the log is followed until the job ends (Ctrl-C
stops following; the job keeps running — cancel it with ``workbench sft --cancel JOB``).
"""

from __future__ import annotations

import argparse
import sys
import time

FLAGS = {  # flag → (type, help); each maps to the SFTConfig field of the same name
    "model": (str, "catalog name, hub id or local folder"),
    "dataset": (str, "comma-separated .json/.jsonl files"),
    "val_dataset": (str, "comma-separated validation files"),
    "val_split": (float, "share of the dataset held out for validation"),
    "sft_type": (str, "lora, qlora or full"),
    "lora_rank": (int, None), "lora_alpha": (int, None), "lora_dropout": (float, None),
    "max_length": (int, None), "max_tiles": (int, None),
    "num_epochs": (float, None), "max_steps": (int, "overrides --num-epochs when > 0"),
    "learning_rate": (float, None), "lr_scheduler": (str, None), "warmup_ratio": (float, None),
    "batch_size": (int, None), "grad_accum": (int, None),
    "checkpoint_share": (float, "with --gradient-checkpointing true: the share of layers checkpointed (default 1)"),
    "deepspeed": (str, "zero2, zero3 or a JSON config path"),
    "processes": (int, "data-parallel processes: 0 = one per visible GPU (1 on a CPU)"),
    "dtype": (str, "auto, bf16, fp16 or fp32"),
    "output_dir": (str, None), "save_steps": (int, None), "eval_steps": (int, None),
    "resume": (str, "a checkpoint folder or 'last'"), "seed": (int, None), "experiment": (str, "MLflow experiment"),
}
BOOLS = ("freeze_vision", "freeze_projector", "freeze_llm", "gradient_checkpointing")


def add_parser(sub) -> None:
    p = sub.add_parser("sft", help="fine-tune in the background (LoRA, QLoRA, full)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a YAML recipe")
    for name, (kind, text) in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    for name in BOOLS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       type=lambda v: v.lower() in ("1", "true", "yes"), metavar="true|false")
    p.add_argument("--detach", action="store_true", help="start the job and return")
    p.add_argument("--cancel", metavar="JOB", help="cancel a running job")
    p.add_argument("--resume-job", metavar="JOB",
                   help="resume a cancelled or failed job from its last checkpoint (with --processes: on another count)")
    p.add_argument("--list", action="store_true", help="list jobs")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import jobs

    if args.list:
        for job in jobs.list_jobs():
            progress = job.progress()
            print(f"{job.id}  {job.state:9s}  step {progress.get('step', 0)}/{progress.get('max_steps', '?')}  "
                  f"run {job.record.get('run_id')}")
        return 0
    if args.cancel:
        jobs.get(args.cancel).cancel()
        print(f"cancelled {args.cancel}")
        return 0
    if args.resume_job:
        job = jobs.get(args.resume_job).resume(processes=args.processes)  # --processes: another count
    else:
        overrides = {k: getattr(args, k) for k in [*FLAGS, *BOOLS] if getattr(args, k) is not None}
        job = jobs.launch(args.config, **overrides)
    print(f"job {job.id} started (log: {job.dir / 'train.log'}; MLflow run {job.run_id})", file=sys.stderr)
    if args.detach:
        print(job.id)
        return 0
    return follow(job)


def follow(job) -> int:
    shown = 0
    path = job.dir / "train.log"
    try:
        while True:
            state = job.state
            if path.exists():
                text = path.read_text(errors="replace")
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
            if state in ("finished", "failed", "killed"):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job.id} keeps running (workbench sft --cancel {job.id})", file=sys.stderr)
        return 130
    status = job.status()
    print(f"job {job.id} {status['state']}" + (f": {status.get('error')}" if status.get("error") else ""), file=sys.stderr)
    return 0 if status["state"] == "finished" else 1
