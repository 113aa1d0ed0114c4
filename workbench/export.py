"""Merging a LoRA adapter into its base model: a full model folder in the native transformers
format with its processor, loadable with plain ``AutoModelForImageTextToText.from_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserInputError


def merge(adapter_dir: str | Path, out: str | Path | None = None, *, base: str | None = None,
          run_id: str | None = None) -> Path:
    """Write ``<adapter_dir>-merged`` (or ``out``); with ``run_id``, also log it to that MLflow
    run and register it (lineage: base model, source run, checkpoint step)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .session import _download, resolve

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserInputError(f"{adapter_dir} has no adapter_config.json: give a LoRA checkpoint folder "
                             "(checkpoint-N or final). A full fine-tune's checkpoints are models already.")
    settings = training_settings(adapter_dir)
    base = base or settings.get("model")
    if not base:
        raise UserInputError(f"Cannot tell the base model of {adapter_dir}: pass base=... (--base).")
    where, _ = resolve(base)
    base_path = where if isinstance(where, Path) else _download(where)
    model = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out) if out else adapter_dir.with_name(adapter_dir.name + "-merged")
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    processor_src = adapter_dir if (adapter_dir / "processor_config.json").exists() else base_path
    AutoProcessor.from_pretrained(processor_src).save_pretrained(out)
    step = adapter_dir.name.split("-")[-1] if adapter_dir.name.startswith("checkpoint-") else "final"
    lineage = {"base_model": str(base), "adapter": str(adapter_dir), "checkpoint_step": step}
    (out / "workbench_lineage.json").write_text(json.dumps(lineage, indent=1))
    if run_id:
        _log_merged(out, run_id, lineage, settings)
    return out


def training_settings(folder: str | Path) -> dict:
    """The fine-tune settings recorded next to a checkpoint (empty if none)."""
    folder = Path(folder)
    for candidate in (folder / "workbench_sft.json", folder.parent / "workbench_sft.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return {}


def _log_merged(out: Path, run_id: str, lineage: dict, settings: dict) -> None:
    import mlflow

    from .pyfunc_model import log_chat_model
    from .tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    name = f"{settings.get('experiment', 'workbench')}-{Path(str(lineage['base_model'])).name}-merged"
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status  # the fine-tune's own ending stays as it was
    with mlflow.start_run(run_id=run_id):
        log_chat_model(out, base=None, name=name, tags={**lineage, "source_run": run_id, "kind": "merged"},
                       artifact_name=f"merged-{lineage['checkpoint_step']}")
    client.update_run(run_id, status=status)
