"""Fine-tuned models as MLflow models: ``mlflow.pyfunc.load_model(uri).predict(...)`` chats.

MLflow's transformers flavor covers text pipelines, not a vision-language model with images in
its input, so this small custom pyfunc model wraps the workbench's own loading and chat: the
artifact is an adapter (with the base model's name in the model config) or a full model folder.

Input: a dict or a list of dicts / a DataFrame with ``question`` and optional ``images`` (paths,
URLs or data URIs); output: one answer string per row.
"""

from __future__ import annotations

from pathlib import Path

import mlflow


class ChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import workbench

        base = (context.model_config or {}).get("base")
        files = context.artifacts["model"]
        self.session = workbench.load(base, adapter=files) if base else workbench.load(files)

    def predict(self, context, model_input, params=None):
        from workbench.chat import Conversation

        rows = _rows(model_input)
        settings = {k: v for k, v in (params or {}).items() if k in ("max_new_tokens", "temperature", "top_p")}
        answers = []
        for row in rows:
            images = row.get("images") or []
            images = [images] if isinstance(images, str) else list(images)
            answers.append(Conversation(self.session, log=False).ask(row["question"], images, **settings))
        return answers


def _rows(model_input) -> list[dict]:
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        return [model_input]
    return list(model_input)


def log_chat_model(folder: str | Path, *, base: str | None, name: str | None, tags: dict[str, str],
                   artifact_name: str = "model"):
    """Log ``folder`` (an adapter when ``base`` is given, else a full model) as the active run's
    ``artifact_name`` and register it under ``name`` with lineage ``tags``; returns the ModelInfo."""
    info = mlflow.pyfunc.log_model(
        name=artifact_name, python_model=ChatModel(), artifacts={"model": str(folder)},
        model_config={"base": base} if base else None, registered_model_name=name,
        pip_requirements=["internvl-workbench"],
    )
    if name and info.registered_model_version is not None:
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(name, str(info.registered_model_version), key, value)
    return info
