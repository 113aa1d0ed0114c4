"""One dataclass for a fine-tune, read from a YAML recipe plus ``key=value`` overrides, and checked
as a whole before any weights load: every bad flag or combination is reported at once, each with
the fix."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserInputError

SFT_TYPES = ("lora", "qlora", "full")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
DEEPSPEED_PRESETS = ("zero2", "zero3")


@dataclass
class SFTConfig:
    model: str = "demo"  # catalog name, hub id or local folder
    dataset: list[str] = field(default_factory=list)  # .json/.jsonl files
    val_dataset: list[str] = field(default_factory=list)
    val_split: float = 0.0  # a share of `dataset` held out when no val_dataset is given
    sft_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str = "all-linear"  # "all-linear" = every linear layer of the language model
    freeze_vision: bool = True
    freeze_projector: bool = False
    freeze_llm: bool = False
    max_length: int = 4096
    max_tiles: int | None = None  # default: the model's
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    # With checkpointing on: the share of language-model layers that recompute in backward (spread
    # evenly; workbench.packing.checkpoint_layers). Less recompute, more activation memory.
    checkpoint_share: float = 1.0
    # Each step's samples end to end in one sequence, no attention across them (workbench.packing):
    # no padding, and far fewer, larger kernels than one sample at a time. Off: padded batches.
    packing: bool = True
    # torch.compile each language-model layer (workbench.packing.compile_layers): fewer, fused kernels
    # and much less host work per step; the first step pays the compile (about a minute on a GPU).
    compile: bool = False
    num_workers: int = 0  # data loader processes encoding samples (images → tiles) beside training
    deepspeed: str | None = None  # zero2, zero3 or a JSON config path
    # Training processes (data parallel, one per GPU): 0 = every visible GPU, or 1 on a CPU. On a
    # CPU, 2+ processes talk over gloo — slow, but the same DDP path (tests use it).
    processes: int = 0
    # bf16 on a GPU that has it, else fp32. "bf16-mixed" keeps fp32 weights and optimizer state and
    # runs the forward pass in bf16 autocast: what training from scratch wants (pure bf16 stalls).
    dtype: str = "auto"
    output_dir: str | None = None  # default: <workbench home>/runs/<job id>
    save_steps: int = 50
    eval_steps: int | None = None  # default: save_steps
    logging_steps: int = 1
    save_total_limit: int | None = None
    eval_samples: int = 16  # validation samples answered per checkpoint for the grounding score
    resume: str | None = None  # a checkpoint folder, or "last"
    seed: int = 42
    experiment: str = "workbench"
    run_name: str | None = None
    run_id: str | None = None  # an MLflow run to continue (set by workbench.jobs)
    register_as: str | None = None  # registered model name; default "<experiment>-<model>"
    job_dir: str | None = None  # where status/progress files go (set by workbench.jobs)

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: dict | list[str] | None = None) -> "SFTConfig":
        import yaml

        values: dict = {}
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise UserInputError(f"Recipe not found: {path}. Pass a YAML file (see recipes/).")
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise UserInputError(f"{path} is not valid YAML: {exc}") from exc
            if not isinstance(values, dict):
                raise UserInputError(f"{path} must hold a mapping of settings (key: value).")
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        values.update(overrides or {})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> "SFTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {difflib.get_close_matches(u, names, 1)[0]}?)"
                     if difflib.get_close_matches(u, names, 1) else u for u in unknown]
            raise UserInputError(f"Unknown setting(s): {', '.join(hints)}. Known: {', '.join(sorted(names))}.")
        values = dict(values)
        for key in ("dataset", "val_dataset"):
            if isinstance(values.get(key), str):
                values[key] = [p for p in values[key].split(",") if p.strip()]
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """For MLflow: every setting as a string."""
        return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in self.to_dict().items()}

    # -- checking ---------------------------------------------------------------------------------

    def check(self, *, gpus: int = 0) -> None:
        """Raise one UserInputError naming every problem and its fix."""
        p: list[str] = []
        if not self.dataset:
            p.append("no dataset: set dataset (a .json/.jsonl file, or several).")
        if self.sft_type not in SFT_TYPES:
            p.append(f"sft_type {self.sft_type!r}: use one of {', '.join(SFT_TYPES)}.")
        if self.sft_type in ("lora", "qlora"):
            if self.lora_rank < 1:
                p.append(f"lora_rank must be ≥ 1, got {self.lora_rank}.")
            if self.lora_alpha <= 0:
                p.append(f"lora_alpha must be > 0, got {self.lora_alpha}.")
            if not 0 <= self.lora_dropout < 1:
                p.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
            if self.freeze_llm:
                p.append("freeze_llm with LoRA leaves nothing to adapt (LoRA targets the language model): "
                         "set freeze_llm false, or use sft_type full to train only the vision parts.")
        if self.sft_type == "full" and self.freeze_vision and self.freeze_projector and self.freeze_llm:
            p.append("everything is frozen: unfreeze one of freeze_vision, freeze_projector, freeze_llm.")
        if self.sft_type == "qlora":
            if not gpus:
                p.append("sft_type qlora needs a CUDA GPU (bitsandbytes 4-bit); use sft_type lora on the CPU.")
            elif importlib.util.find_spec("bitsandbytes") is None:
                p.append("sft_type qlora needs bitsandbytes: pip install bitsandbytes, or use sft_type lora.")
        if self.deepspeed is not None:
            if self.deepspeed not in DEEPSPEED_PRESETS and not Path(self.deepspeed).is_file():
                p.append(f"deepspeed {self.deepspeed!r}: use zero2, zero3 or the path of a DeepSpeed JSON config.")
            if importlib.util.find_spec("deepspeed") is None:
                p.append("deepspeed is set but not installed: pip install deepspeed, or drop deepspeed.")
            if not gpus:
                p.append("deepspeed needs CUDA GPUs; none is visible here. Drop deepspeed to train on the CPU.")
            if self.sft_type == "qlora":
                p.append("qlora with deepspeed is not supported: use lora with deepspeed, or qlora alone.")
        if self.processes < 0:
            p.append(f"processes must be ≥ 0 (0: one per visible GPU), got {self.processes}.")
        elif gpus and self.processes > gpus:
            p.append(f"processes {self.processes} but {gpus} GPU(s) are visible: set processes ≤ {gpus} "
                     "(or 0 for one per GPU), or make more GPUs visible (CUDA_VISIBLE_DEVICES).")
        if not 0 < self.checkpoint_share <= 1:
            p.append(f"checkpoint_share must be in (0, 1] (the share of layers checkpointed), got {self.checkpoint_share}; "
                     "to checkpoint none, set gradient_checkpointing false.")
        elif self.checkpoint_share < 1 and not self.gradient_checkpointing:
            p.append(f"checkpoint_share {self.checkpoint_share} without gradient_checkpointing does nothing: "
                     "set gradient_checkpointing true, or drop checkpoint_share.")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            p.append("set num_epochs > 0 or max_steps > 0.")
        if not 0 <= self.val_split < 1:
            p.append(f"val_split must be in [0, 1), got {self.val_split}.")
        if self.val_split and self.val_dataset:
            p.append("set val_dataset or val_split, not both.")
        if self.learning_rate <= 0:
            p.append(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.lr_scheduler not in SCHEDULES:
            p.append(f"lr_scheduler {self.lr_scheduler!r}: use one of {', '.join(SCHEDULES)}.")
        if self.num_workers < 0:
            p.append(f"num_workers must be ≥ 0 (0 encodes samples in the training process), got {self.num_workers}.")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "max_length"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.eval_steps is not None and self.eval_steps < 1:
            p.append(f"eval_steps must be ≥ 1, got {self.eval_steps}.")
        if self.max_length < 300:
            p.append(f"max_length {self.max_length} cannot hold one image (256 tokens per tile plus the text): use ≥ 300.")
        if self.dtype not in ("auto", "bf16", "bf16-mixed", "fp16", "fp32"):
            p.append(f"dtype {self.dtype!r}: use auto, bf16, bf16-mixed, fp16 or fp32.")
        if self.dtype in ("bf16", "bf16-mixed", "fp16") and not gpus:
            p.append(f"dtype {self.dtype} training needs a GPU here; use dtype fp32 (or auto) on the CPU.")
        if self.resume not in (None, "last") and not Path(self.resume).is_dir():
            p.append(f"resume {self.resume!r} is not a checkpoint folder: give checkpoint-N's path or 'last'.")
        if p:
            raise UserInputError("The fine-tune settings need fixing:\n  - " + "\n  - ".join(p))


def parse_overrides(items: list[str]) -> dict:
    """``["lora_rank=16", "dataset=a.jsonl,b.jsonl"]`` → typed values (YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UserInputError(f"Override {item!r} must look like key=value.")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    return out
