"""Supervised fine-tuning of an InternVL model: LoRA, QLoRA or full, on the user's datasets.

    accelerate launch -m workbench.sft --config recipes/demo-lora.yaml [--set key=value ...]

Reads top to bottom: check every setting and every dataset line (nothing loads before both are
clean), set up (tracking, model, adapters, data), train with transformers' Trainer, clean up
(final adapter, MLflow model, status). ``workbench sft`` and ``workbench.jobs.launch`` run this
module in a background ``accelerate launch`` process.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import traceback
from pathlib import Path

from . import data, packing
from .errors import UserInputError
from .sft_config import SFTConfig

LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION_LINEAR = r".*vision_tower.*\.(q_proj|k_proj|v_proj|projection_layer|fc1|fc2)"


def parse_args(argv=None) -> SFTConfig:
    ap = argparse.ArgumentParser(prog="workbench.sft", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a YAML recipe (see recipes/)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe settings")
    args = ap.parse_args(argv)
    return SFTConfig.from_yaml(args.config, args.set)


def main(argv=None) -> int:
    import torch

    # 1. Check: settings, then every dataset line, before any weights load.
    try:
        cfg = parse_args(argv)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        cfg.check(gpus=gpus)
        from .session import resolve

        where, spec = resolve(cfg.model)
        multi_turn = spec.multi_turn_images if spec else True
        train_samples = data.load(cfg.dataset, multi_turn_images=multi_turn)
        val_samples = data.load(cfg.val_dataset, multi_turn_images=multi_turn) if cfg.val_dataset else []
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _status(cfg if "cfg" in locals() else None, "failed", error=str(exc))
        return 2
    if cfg.val_split and not val_samples:
        rng = random.Random(cfg.seed)
        shuffled = train_samples[:]
        rng.shuffle(shuffled)
        n_val = max(1, round(len(shuffled) * cfg.val_split))
        val_samples, train_samples = shuffled[:n_val], shuffled[n_val:]

    # 2. Set up and 3. train; every failure ends the MLflow run as FAILED with its error.
    from .tracker import Tracking

    tracking = Tracking(cfg)
    try:
        tracking.start(train_samples, val_samples)
        trainer, processor = _setup(cfg, where, spec, train_samples, val_samples, tracking, gpus)
        resume = _resume_point(cfg, trainer.args.output_dir)
        trainer.train(resume_from_checkpoint=resume)
        # 4. Clean up: the final adapter (or model), logged and registered.
        final = Path(trainer.args.output_dir) / "final"
        trainer.save_model(str(final))
        processor.save_pretrained(final)
        tracking.finish(final, trainer.state.global_step, where, spec)
    except BaseException as exc:
        tracking.fail(exc, traceback.format_exc())
        raise
    return 0


def _setup(cfg: SFTConfig, where, spec, train_samples, val_samples, tracking, gpus):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments

    from .paths import subdir
    from .session import _download

    path = where if isinstance(where, Path) else _download(where)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
             "bf16-mixed": torch.float32}.get(cfg.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if gpus and torch.cuda.is_bf16_supported() else torch.float32
    kwargs = {"dtype": dtype}
    if cfg.sft_type == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                                                           bnb_4bit_quant_type="nf4")
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path)
    if cfg.packing:
        packing.use_packed_attention(model)
    model = _trainable(model, cfg)
    packing.frozen_vision_without_autograd(model)
    if cfg.gradient_checkpointing:  # here, not by the Trainer, which cannot checkpoint a share of the layers
        n = packing.checkpoint_layers(model, cfg.checkpoint_share)
        print(f"gradient checkpointing: {n} of {model.config.get_text_config().num_hidden_layers} language-model "
              "layers", flush=True)
    if cfg.compile:
        packing.compile_layers(model)
    max_tiles = cfg.max_tiles or (spec.max_tiles if spec else int(getattr(processor.image_processor, "max_patches", 12)))
    system = spec.system_prompt if spec else None
    train_set = SFTDataset(train_samples, processor, cfg.max_length, max_tiles, system)
    val_set = SFTDataset(val_samples, processor, cfg.max_length, max_tiles, system) if val_samples else None
    out = cfg.output_dir or str(subdir("runs") / (Path(cfg.job_dir).name if cfg.job_dir else "sft"))
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy="steps" if val_set else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps, seed=cfg.seed,
        bf16=dtype == torch.bfloat16 or cfg.dtype == "bf16-mixed",
        fp16=dtype == torch.float16, deepspeed=_deepspeed(cfg), report_to=[], remove_unused_columns=False,
        dataloader_num_workers=cfg.num_workers, use_cpu=not gpus, disable_tqdm=True, save_only_model=False,
        prediction_loss_only=True,  # evaluation needs the loss (and the tracker's own generations), not logits
    )
    Path(out).mkdir(parents=True, exist_ok=True)  # the settings travel with the checkpoints (infer --ckpt, merge)
    settings = {**cfg.to_dict(), "run_id": tracking.run_id}  # the run this fine-tune logs to (merge logs there too)
    (Path(out) / "workbench_sft.json").write_text(json.dumps(settings, indent=1))
    collator = (packing.PackingCollator if cfg.packing else Collator)(processor.tokenizer.pad_token_id)
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=val_set, data_collator=collator,
                      callbacks=tracking.callbacks(processor, val_samples, max_tiles, system, collator))
    return trainer, processor


def _trainer_class():
    from transformers import Trainer

    class SFTTrainer(Trainer):
        """transformers' Trainer with the workbench's loss (head at answer positions only, see
        workbench.packing). The loss is a mean over the micro-batch, so Trainer scales it for
        gradient accumulation itself."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return packing.loss(model, inputs, return_outputs=return_outputs)

    return SFTTrainer


def _trainable(model, cfg: SFTConfig):
    """Freeze what the settings say; wrap in LoRA for lora/qlora."""
    inner = model.model
    parts = {"vision": [inner.vision_tower], "projector": [inner.multi_modal_projector],
             "llm": [inner.language_model, model.lm_head]}
    if cfg.sft_type == "full":
        for name, frozen in (("vision", cfg.freeze_vision), ("projector", cfg.freeze_projector), ("llm", cfg.freeze_llm)):
            for module in parts[name]:
                module.requires_grad_(not frozen)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.sft_type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.lora_targets == "all-linear":
        targets = LLM_LINEAR + ("" if cfg.freeze_vision else "|" + VISION_LINEAR)
    else:
        targets = list(cfg.lora_targets) if not isinstance(cfg.lora_targets, str) else cfg.lora_targets
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      modules_to_save=None if cfg.freeze_projector else ["multi_modal_projector"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _deepspeed(cfg: SFTConfig):
    if cfg.deepspeed in (None, ""):
        return None
    if cfg.deepspeed in ("zero2", "zero3"):
        stage = int(cfg.deepspeed[-1])
        zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        if stage == 3:  # the final model as plain 16-bit weights, not only ZeRO's shards (bench/zero_one_gpu.py)
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        return {"zero_optimization": zero,
                "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto", "train_batch_size": "auto"}
    return json.loads(Path(cfg.deepspeed).read_text())


def _resume_point(cfg: SFTConfig, output_dir: str):
    if cfg.resume is None:
        return None
    if cfg.resume != "last":
        return cfg.resume
    found = last_checkpoint(output_dir)
    if found is None:
        raise UserInputError(f"resume=last but {output_dir} has no checkpoint-N folder yet: start without resume.")
    return str(found)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoint-N folders of a run, in step order. The Trainer writes
    trainer_state.json last: a folder without it is still being written, or was cut off by a
    cancel, and resuming from it would fail."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*")
               if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


class SFTDataset:
    """Samples encoded on demand; one whose images alone exceed max_length is replaced by the next
    that fits (and counted, so the log says how many were left out)."""

    def __init__(self, samples, processor, max_length, max_tiles, system):
        self.samples, self.processor = samples, processor
        self.max_length, self.max_tiles, self.system = max_length, max_tiles, system
        self.left_out: set[int] = set()
        self.truncated: set[int] = set()

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            enc = data.encode(self.samples[j], self.processor, max_length=self.max_length, max_tiles=self.max_tiles,
                              default_system=self.system)
            if enc is not None:
                if enc.truncated:
                    self.truncated.add(j)
                return enc
            self.left_out.add(j)
        raise UserInputError(f"No sample fits in max_length={self.max_length}: raise max_length or lower max_tiles.")

    def grounding(self):
        return [s for s in self.samples if s.has_boxes]


class Collator:
    """Right-pads ids (pad token) and labels (-100), stacks every sample's tiles, and the answer
    positions (packing.loss); counts tokens."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, batch):
        import torch

        n = max(len(b.input_ids) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for row, b in enumerate(batch):
            ids[row, :len(b.input_ids)] = torch.tensor(b.input_ids)
            labels[row, :len(b.labels)] = torch.tensor(b.labels)
            mask[row, :len(b.input_ids)] = 1
        self.tokens += int(mask.sum())
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask,
               "answer_positions": packing.answer_positions(labels)}
        tiles = [b.pixel_values for b in batch if b.pixel_values is not None]
        if tiles:
            out["pixel_values"] = torch.cat(tiles)
        return out


def _status(cfg, state: str, **extra) -> None:
    if cfg is None or not cfg.job_dir:
        return
    path = Path(cfg.job_dir) / "status.json"
    path.write_text(json.dumps({"state": state, **extra}))


if __name__ == "__main__":
    sys.exit(main())
