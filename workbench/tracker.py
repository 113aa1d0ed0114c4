"""What a fine-tune records, in MLflow and in its job folder.

One MLflow run per job (continued on resume): every setting as a parameter, the datasets as logged
inputs, loss / learning rate / grad norm / tokens/s / samples/s per step, system metrics, each
checkpoint's adapter with its evaluation (loss, grounding Acc@0.5, sample answers drawn over their
images), the final adapter as a registered MLflow model. The job folder gets ``status.json`` and
``progress.json`` for the notebook's jobs panel. Only the main process records.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from . import grounding, media
from .sft_config import SFTConfig

PROGRESS_HISTORY = 2000  # points of the loss curve kept in progress.json


class Tracking:
    def __init__(self, cfg: SFTConfig):
        self.cfg = cfg
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.run_id: str | None = cfg.run_id
        self.logged_up_to = 0  # steps already in the run (a resumed job skips them: no duplicates)
        self.job_dir = Path(cfg.job_dir) if cfg.job_dir else None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, train_samples, val_samples) -> None:
        if not self.main:
            return
        import mlflow

        from .tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
        if self.run_id is None:
            mlflow.set_experiment(self.cfg.experiment)
        run = mlflow.start_run(run_id=self.run_id, run_name=self.cfg.run_name, log_system_metrics=True)
        self.run_id = run.info.run_id
        client = mlflow.MlflowClient()
        history = client.get_metric_history(self.run_id, "loss")
        self.logged_up_to = max((m.step for m in history), default=0)
        # how many processes trained (a tag, not a parameter: a resume may use another count)
        mlflow.set_tag("workbench.processes", os.environ.get("WORLD_SIZE", "1"))
        if not self.logged_up_to:
            mlflow.log_params(self.cfg.flat_params())
            for context, files, samples in (("training", self.cfg.dataset, train_samples),
                                            ("validation", self.cfg.val_dataset or self.cfg.dataset, val_samples)):
                if samples:
                    _log_dataset(files, len(samples), context)
        self._status("running")

    def callbacks(self, processor, val_samples, max_tiles, system, collator):
        from transformers import TrainerCallback

        tracking = self

        class Recorder(TrainerCallback):
            def __init__(self):
                self.t0 = self.last_t = time.monotonic()
                self.last_tokens = 0
                self.start_step = 0
                self.history: list[dict] = []

            def on_train_begin(self, args, state, control, **kw):
                self.t0 = self.last_t = time.monotonic()
                self.start_step = state.global_step  # > 0 when resumed

            def on_log(self, args, state, control, logs=None, **kw):
                tokens = collator.tokens
                if logs and "loss" in logs and args.world_size > 1:
                    # Every process logs the training loss at the same steps: sum their token counts
                    # here (each collator saw only its own process's batches).
                    import torch
                    import torch.distributed as dist

                    if dist.is_initialized():
                        t = torch.tensor([float(tokens)], device=args.device)
                        dist.all_reduce(t)
                        tokens = int(t.item())
                if not tracking.main or not logs:
                    return
                step = state.global_step
                now = time.monotonic()
                metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
                if "loss" in metrics:
                    dt = max(now - self.last_t, 1e-9)
                    metrics["tokens_per_s"] = (tokens - self.last_tokens) / dt
                    metrics["samples_per_s"] = args.logging_steps * args.per_device_train_batch_size * \
                        args.gradient_accumulation_steps * args.world_size / dt
                    self.last_t, self.last_tokens = now, tokens
                    self.history.append({"step": step, "loss": metrics["loss"], "lr": metrics.get("learning_rate")})
                    self.history = self.history[-PROGRESS_HISTORY:]
                if step > tracking.logged_up_to or any(k.startswith("eval_") for k in metrics):
                    import mlflow

                    mlflow.log_metrics(metrics, step=step)
                elapsed = now - self.t0
                done = step - self.start_step
                eta = elapsed / max(done, 1) * (state.max_steps - step) if done else None
                tracking._progress(step=step, max_steps=state.max_steps, epoch=state.epoch, elapsed_s=elapsed,
                                   eta_s=eta, history=self.history)

            def on_save(self, args, state, control, model=None, **kw):
                if tracking.main:
                    ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    tracking.checkpoint(ckpt, state.global_step, model, processor, val_samples, max_tiles, system)

        return [Recorder()]

    def checkpoint(self, folder: Path, step: int, model, processor, val_samples, max_tiles, system) -> None:
        """Log a checkpoint's adapter and its evaluation at ``step``."""
        import mlflow

        weights = [p for p in folder.iterdir() if p.name.startswith(("adapter_", "model", "config"))] \
            if folder.exists() else []
        for p in weights:
            mlflow.log_artifact(str(p), artifact_path=f"checkpoints/checkpoint-{step}")
        scores = evaluate_grounding(model, processor, val_samples[: self.cfg.eval_samples], max_tiles, system)
        if scores:
            acc, shown = scores
            mlflow.log_metric("eval_grounding_acc50", acc, step=step)
            for i, image in enumerate(shown):
                mlflow.log_image(image, f"samples/step-{step:06d}/{i}.png")
        self._progress(last_checkpoint=str(folder), last_checkpoint_step=step)

    def finish(self, final: Path, step: int, where, spec) -> None:
        if not self.main:
            return
        import mlflow

        from .pyfunc_model import log_chat_model

        base = str(self.cfg.model)
        mlflow.log_artifacts(str(final), artifact_path="adapter" if self.cfg.sft_type != "full" else "model_files")
        name = self.cfg.register_as or f"{self.cfg.experiment}-{Path(str(self.cfg.model)).name}"
        log_chat_model(final, base=base if self.cfg.sft_type != "full" else None, name=name,
                       tags={"base_model": str(self.cfg.model), "source_run": self.run_id, "checkpoint_step": str(step),
                             "kind": "adapter" if self.cfg.sft_type != "full" else "full"})
        log = self.job_dir / "train.log" if self.job_dir else None
        if log and log.exists():
            mlflow.log_artifact(str(log))
        mlflow.end_run("FINISHED")
        self._status("finished", step=step, final=str(final))

    def fail(self, exc: BaseException, trace: str) -> None:
        if not self.main:
            return
        import mlflow

        if isinstance(exc, KeyboardInterrupt):
            state, status = "killed", "KILLED"
        else:
            state, status = "failed", "FAILED"
        try:
            if mlflow.active_run() is not None:
                mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
                mlflow.log_text(trace, "error.txt")
                mlflow.end_run(status)
        finally:
            self._status(state, error=f"{type(exc).__name__}: {exc}")

    # -- job folder files -------------------------------------------------------------------------

    def _status(self, state: str, **extra) -> None:
        if self.job_dir:
            _write_json(self.job_dir / "status.json", {"state": state, "run_id": self.run_id, **extra})

    def _progress(self, **values) -> None:
        if not self.job_dir:
            return
        path = self.job_dir / "progress.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        _write_json(path, current)


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)  # readers never see half a file


def _log_dataset(files: list[str], count: int, context: str) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f).read_bytes())
    source = resolve_dataset_source(str(Path(files[0]).resolve()))  # the first file; the name lists all
    dataset = MetaDataset(source=source, name=",".join(Path(f).name for f in files), digest=digest.hexdigest()[:16])
    mlflow.log_input(dataset, context=context, tags={"samples": str(count)})


def evaluate_grounding(model, processor, samples, max_tiles, system, max_new_tokens: int = 48):
    """Acc@0.5 of the first box of each answer against the reference's first box, with the answers
    drawn over their images (predicted and true). None when no sample has boxes."""
    import torch

    cases = [s for s in samples if grounding.parse(s.turns[-1][1]).boxes and s.images]
    if not cases:
        return None
    was_training = model.training
    model.eval()
    predicted, truth, shown = [], [], []
    device = next(model.parameters()).device
    try:
        for s in cases:
            messages = [{"role": "system", "content": system}] if (s.system or system) else []
            if messages:
                messages[0]["content"] = s.system or system
            for user, answer in s.turns[:-1]:
                messages += [{"role": "user", "content": user.replace("<image>", "<IMG_CONTEXT>")},
                             {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": s.turns[-1][0].replace("<image>", "<IMG_CONTEXT>")})
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            images = [media.load_image(src) for src in s.images]
            inputs = processor(text=[prompt], images=images, return_tensors="pt", max_patches=max_tiles).to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=False)
            text = text.split("<|im_end|>")[0]
            pred = grounding.parse(text).boxes
            true_label, true_box = grounding.parse(s.turns[-1][1]).boxes[0]
            predicted.append(pred[0][1] if pred else None)
            truth.append(true_box)
            if len(shown) < 4:
                refs = [grounding.Ref(f"truth: {true_label or ''}", [true_box])] + grounding.parse(text).refs
                shown.append(grounding.draw(images[-1], refs))
    finally:
        model.train(was_training)
    return grounding.accuracy(predicted, truth), shown
