"""Checkpoints side by side: every fine-tune's checkpoints with their evaluation (from MLflow), and
two of them — or the base model and one — loaded for A/B chat.

Two LoRA checkpoints of one base share that base: it is loaded once, both adapters are attached to
it (peft's named adapters), and each side's generation switches to its adapter (or, for the base
side, runs with adapters disabled). Generation is serialised per process anyway (one generation
thread), so the two sides answer one after the other. Full fine-tunes are whole models: each
side is then loaded on its own.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .errors import UserInputError

METRICS = ("eval_loss", "eval_grounding_acc50")
BASE = "base"  # the A side may be the base model itself


@dataclass
class Checkpoint:
    job: str
    run_id: str
    experiment: str
    base: str  # the model the fine-tune started from
    step: int | None  # None: the final adapter
    path: Path
    kind: str  # "adapter" (LoRA/QLoRA) or "full"
    metrics: dict = field(default_factory=dict)  # METRICS at this step (final: the last logged)

    @property
    def label(self) -> str:
        return f"{self.job} · {'final' if self.step is None else f'step {self.step}'}"


def checkpoints(experiment: str | None = None) -> list[Checkpoint]:
    """Every checkpoint of every fine-tune job on disk (newest job first), with its eval metrics."""
    from . import jobs

    found = []
    client = None
    for job in jobs.list_jobs():
        try:
            cfg = job.config
            run_id = job.run_id
        except (OSError, KeyError, json.JSONDecodeError, UserInputError):
            continue  # a job folder from a crash before it was recorded
        if experiment and cfg.experiment != experiment:
            continue
        if client is None:
            client = _client()
        history = metric_history(client, run_id)
        kind = "full" if cfg.sft_type == "full" else "adapter"
        folders = [(int(p.name.split("-")[-1]), p) for p in job.checkpoints()]
        final = job.output_dir / "final"
        if final.exists():
            folders.append((None, final))
        for step, path in folders:
            at = {m: _at(history.get(m, []), step) for m in METRICS}
            found.append(Checkpoint(job.id, run_id, cfg.experiment, str(cfg.model), step, path, kind,
                                    {k: v for k, v in at.items() if v is not None}))
    return found


def experiments() -> list[str]:
    from . import jobs

    names = set()
    for job in jobs.list_jobs():
        try:
            names.add(job.config.experiment)
        except (OSError, UserInputError):
            pass
    return sorted(names)


def metric_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), …]} of a run's evaluation metrics (empty where MLflow cannot say)."""
    out = {}
    for name in METRICS:
        try:
            out[name] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        except Exception:  # the run was deleted, or the server is not reachable: no numbers, not an error
            out[name] = []
    return out


def _at(history: list[tuple[int, float]], step: int | None):
    if not history:
        return None
    if step is None:
        return history[-1][1]
    exact = [v for s, v in history if s == step]
    return exact[-1] if exact else None


def _client():
    from mlflow import MlflowClient

    from .tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def compare_fragment(a: Checkpoint | None, b: Checkpoint) -> str:
    """The MLflow UI route comparing the runs of two checkpoints (one run: that run's page)."""
    client = _client()
    runs = list(dict.fromkeys(c.run_id for c in (a, b) if c is not None))
    if len(runs) == 1:
        run = client.get_run(runs[0])
        return f"#/experiments/{run.info.experiment_id}/runs/{runs[0]}"
    experiments = list(dict.fromkeys(client.get_run(r).info.experiment_id for r in runs))
    return "#/compare-runs?runs=" + quote(json.dumps(runs)) + "&experiments=" + quote(json.dumps(experiments))


# -- A/B loading --------------------------------------------------------------------------------


class AdapterView:
    """One adapter of a shared ``PeftModel`` (or none: the base), as a model a session can chat
    with: ``generate`` and calls switch to that adapter first. Everything else is the shared model's."""

    _lock = threading.Lock()  # adapter switching and generating are one step

    def __init__(self, peft_model, adapter: str | None):
        self._peft = peft_model
        self._adapter = adapter

    def generate(self, **kwargs):
        with self._switched():
            return self._peft.generate(**kwargs)

    def __call__(self, **kwargs):
        with self._switched():
            return self._peft(**kwargs)

    @contextlib.contextmanager
    def _switched(self):
        with self._lock:
            if self._adapter is None:
                with self._peft.disable_adapter():
                    yield
            else:
                self._peft.set_adapter(self._adapter)
                yield

    def __getattr__(self, name):
        return getattr(self._peft, name)


@dataclass
class Pair:
    a: object  # Session
    b: object
    shared: bool  # one base in memory for both sides
    owned: list[str]  # registry names of the sessions loaded for the pair (unload frees them)
    base_parameters: int
    adapter_parameters: int  # per adapter (0 when not shared)

    def describe(self) -> str:
        if self.shared:
            return (f"one base in memory ({self.base_parameters / 1e6:.1f} M parameters) shared by both sides; "
                    f"each adapter adds {self.adapter_parameters / 1e6:.2f} M")
        return f"two models in memory ({self.base_parameters / 1e6:.1f} M parameters in all)"

    def unload(self) -> None:
        from . import session as sessions

        for name in self.owned:
            if name in sessions.sessions():
                sessions.unload(name)


def load_pair(a: Checkpoint | str, b: Checkpoint, *, name: str | None = None) -> Pair:
    """Load A (a checkpoint, or ``BASE``: b's base model) and B for A/B chat, sharing the base
    when both are adapters of it. Sessions are named ``<name>-A`` / ``-B`` (``-base``); by default
    ``compare``, or ``compare2``… while another pair holds that name."""
    from peft import PeftModel

    from . import session as sessions

    if name is None:
        taken = {n.rsplit("-", 1)[0] for n in sessions.sessions()}
        name, i = "compare", 2
        while name in taken:
            name, i = f"compare{i}", i + 1

    if not isinstance(b, Checkpoint):
        raise UserInputError("B must be a checkpoint (A may be the base model).")
    base_side = a == BASE
    if b.kind != "adapter" or not (base_side or (a.kind == "adapter" and a.base == b.base)):
        # a full fine-tune, or adapters of different bases: each side is a session of its own
        first = sessions.load(b.base if base_side else _model_of(a), adapter=None if base_side else _adapter_of(a),
                              name=f"{name}-A")
        second = sessions.load(_model_of(b), adapter=_adapter_of(b), name=f"{name}-B")
        total = _count(first.model) + _count(second.model)
        return Pair(first, second, False, [first.name, second.name], total, 0)

    base = sessions.load(b.base, name=f"{name}-base")
    base_parameters = _count(base.model)
    peft = PeftModel.from_pretrained(base.model, str(b.path), adapter_name="B").eval()
    if not base_side:
        peft.load_adapter(str(a.path), adapter_name="A")
    adapter_parameters = (_count(peft) - base_parameters) // (1 if base_side else 2)
    side_a = _view(base, AdapterView(peft, None if base_side else "A"), f"{name}-A",
                   None if base_side else str(a.path))
    side_b = _view(base, AdapterView(peft, "B"), f"{name}-B", str(b.path))
    return Pair(side_a, side_b, True, [base.name], base_parameters, adapter_parameters)


def _view(base, model, name: str, adapter: str | None):
    from dataclasses import replace

    return replace(base, name=name, model=model, adapter=adapter)


def _model_of(c: Checkpoint) -> str:
    return c.base if c.kind == "adapter" else str(c.path)


def _adapter_of(c: Checkpoint):
    return c.path if c.kind == "adapter" else None


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())
