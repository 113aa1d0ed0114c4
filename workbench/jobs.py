"""Fine-tunes as background jobs: ``accelerate launch`` subprocesses, recorded on disk.

``launch()`` checks the settings and the data in the caller (errors come back at once), opens the
job's MLflow run, writes ``<home>/jobs/<id>/`` (job.json, config.yaml, train.log) and starts
``accelerate launch -m workbench.sft`` in its own session — not a child that dies with the kernel.
A later kernel finds every job with ``list()``. The trainer writes status.json and progress.json
there; a process that vanished without writing a final status is reported (and its run marked)
FAILED with the end of its log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import data
from .errors import UserInputError
from .paths import subdir
from .sft_config import SFTConfig

FINAL_STATES = ("finished", "failed", "killed")
_children: dict[str, subprocess.Popen] = {}  # jobs started by this process (polled, so no zombies)


@dataclass
class Job:
    id: str
    dir: Path

    # -- what is recorded -------------------------------------------------------------------------

    @property
    def record(self) -> dict:
        return json.loads((self.dir / "job.json").read_text())

    @property
    def config(self) -> SFTConfig:
        return SFTConfig.from_yaml(self.dir / "config.yaml")

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def status(self) -> dict:
        path = self.dir / "status.json"
        return json.loads(path.read_text()) if path.exists() else {"state": "starting"}

    @property
    def state(self) -> str:
        status = self.status()
        if status["state"] in FINAL_STATES:
            return status["state"]
        if self._alive():
            return status["state"]
        # Gone without a word (killed by the OS, a crash before tracking started): say so, once.
        error = "the training process ended without reporting; end of its log:\n" + self.log_tail(20)
        self._end("failed", "FAILED", error)
        return "failed"

    def progress(self) -> dict:
        path = self.dir / "progress.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "train.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def checkpoints(self) -> list[Path]:
        from .sft import checkpoints

        return checkpoints(self.output_dir)

    # -- verbs ------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> str:
        end = None if timeout is None else time.monotonic() + timeout
        while self.state not in FINAL_STATES:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
            time.sleep(poll)
        return self.state

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the whole process tree; checkpoints stay; the MLflow run ends KILLED."""
        import psutil

        pid = self.record.get("pid")
        if self._alive():
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.monotonic() + grace_s
            while self._alive() and time.monotonic() < end:
                time.sleep(0.2)
            if self._alive():
                os.killpg(pid, signal.SIGKILL)
            # Any process of the tree that left the group (none should) goes too.
            for p in psutil.process_iter(["cmdline"]):
                if str(self.dir) in " ".join(p.info["cmdline"] or []):
                    p.kill()
        if self.status()["state"] not in FINAL_STATES:
            self._end("killed", "KILLED", "cancelled by the user")

    def resume(self, processes: int | None = None) -> "Job":
        """Continue from the last checkpoint in the same MLflow run (no step logged twice);
        ``processes``: another process (GPU) count than the job had. A data-parallel checkpoint
        holds whole weights and optimizer state, so it resumes on any count; a DeepSpeed one is
        sharded per process and needs the count it was saved with."""
        if self.state not in ("killed", "failed"):
            raise UserInputError(f"Job {self.id} is {self.state}; only a cancelled or failed job can be resumed.")
        ckpts = self.checkpoints()
        if not ckpts:
            raise UserInputError(f"Job {self.id} saved no checkpoint before it stopped: launch it again instead.")
        cfg = self.config
        if processes is not None:
            import torch

            cfg.processes = processes
            cfg.check(gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
        cfg.resume = str(ckpts[-1])
        (self.dir / "config.yaml").write_text(_yaml(cfg))
        (self.dir / "status.json").unlink(missing_ok=True)
        _start(self, cfg)
        return self

    def merge(self, step: int | None = None, out: str | Path | None = None) -> Path:
        """Merge a checkpoint's adapter (default: the final one) into a full model folder."""
        from .export import merge

        folder = self.output_dir / "final" if step is None else self.output_dir / f"checkpoint-{step}"
        return merge(folder, out, run_id=self.run_id)

    def _alive(self) -> bool:
        import psutil

        child = _children.get(self.id)
        if child is not None and child.poll() is not None:
            return False
        pid = self.record.get("pid")
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE and str(self.dir) in " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
            return False

    def _end(self, state: str, mlflow_status: str, error: str) -> None:
        (self.dir / "status.json").write_text(json.dumps({"state": state, "run_id": self.run_id, "error": error}))
        try:
            client = _client()
            if state == "failed":
                client.set_tag(self.run_id, "error", error[:5000])
            client.set_terminated(self.run_id, mlflow_status)
        except Exception as exc:  # the job's state is on disk either way
            print(f"warning: could not mark MLflow run {self.run_id} {mlflow_status}: {exc}", file=sys.stderr)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self.state!r})"


def launch(recipe: str | Path | None = None, **overrides) -> Job:
    """Check, then start a fine-tune in the background; returns at once."""
    import torch

    cfg = SFTConfig.from_yaml(recipe, overrides)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cfg.check(gpus=gpus)
    for files in (cfg.dataset, cfg.val_dataset):
        if files:
            data.load(files)  # every problem of every line, now, in the caller
    cfg.dataset = [str(Path(p).resolve()) for p in cfg.dataset]
    cfg.val_dataset = [str(Path(p).resolve()) for p in cfg.val_dataset]
    job_id = datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    job = Job(job_id, subdir("jobs") / job_id)
    job.dir.mkdir(parents=True)
    cfg.job_dir = str(job.dir)
    cfg.output_dir = str(Path(cfg.output_dir).resolve()) if cfg.output_dir else str(subdir("runs") / job_id)

    import mlflow

    client = _client()
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
    run = client.create_run(experiment_id, run_name=cfg.run_name or job_id, tags={"workbench.job": job_id})
    cfg.run_id = run.info.run_id
    (job.dir / "config.yaml").write_text(_yaml(cfg))
    mlflow.MlflowClient(tracking_uri=client.tracking_uri).log_artifact(cfg.run_id, str(job.dir / "config.yaml"))
    _start(job, cfg, gpus=gpus, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return job


def list_jobs() -> list[Job]:
    """Every job recorded under the workbench home, newest first (running or not)."""
    root = subdir("jobs")
    return [Job(p.name, p) for p in sorted(root.iterdir(), reverse=True) if (p / "job.json").exists()]


def get(job_id: str) -> Job:
    job = Job(job_id, subdir("jobs") / job_id)
    if not (job.dir / "job.json").exists():
        known = ", ".join(j.id for j in list_jobs()[:5]) or "none yet"
        raise UserInputError(f"No job {job_id!r}. Recent jobs: {known}.")
    return job


def process_count(processes: int, gpus: int) -> int:
    """What ``processes`` means: 0 is one per visible GPU (one on a CPU)."""
    return processes or max(gpus, 1)


def command(job: Job, gpus: int, processes: int = 0) -> list[str]:
    """The ``accelerate launch`` command line of a job: ``processes`` (0: one per GPU, 1 on a CPU)."""
    n = process_count(processes, gpus)
    launch_args = ["--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]
    if n > 1:
        # torchrun under the hood, on a free port so that two jobs never meet. Without GPUs the
        # processes find no CUDA and join over gloo (accelerate's --cpu would start only one).
        launch_args += ["--multi_gpu", "--main_process_port", str(_free_port())]
        if not gpus:
            launch_args += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // n))]
    elif not gpus:
        launch_args += ["--cpu", "--num_cpu_threads_per_process", str(os.cpu_count() or 1)]
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "-m", "workbench.sft",
            "--config", str(job.dir / "config.yaml")]


def rendezvous(cfg: SFTConfig, gpus: int) -> dict:
    """Variables a single DeepSpeed process needs: accelerate starts one process without torchrun,
    so none are set, and DeepSpeed's engine still builds a process group (it stops without them)."""
    if not cfg.deepspeed or process_count(cfg.processes, gpus) != 1:
        return {}
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(job: Job, cfg: SFTConfig, gpus: int | None = None, created: str | None = None) -> None:
    import torch

    from .tracking import tracking_uri

    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cmd = command(job, gpus, cfg.processes)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "PYTHONUNBUFFERED": "1", **rendezvous(cfg, gpus)}
    with open(job.dir / "train.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=Path.cwd())
    _children[job.id] = proc
    record = json.loads((job.dir / "job.json").read_text()) if (job.dir / "job.json").exists() else {}
    record.update({"id": job.id, "pid": proc.pid, "command": cmd, "run_id": cfg.run_id,
                   "created": record.get("created", created), "model": cfg.model, "dataset": cfg.dataset})
    (job.dir / "job.json").write_text(json.dumps(record, indent=1))


def _client():
    from mlflow import MlflowClient

    from .tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def _yaml(cfg: SFTConfig) -> str:
    import yaml

    header = f"# accelerate launch -m workbench.sft --config {'{this file}'}\n"
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


list = list_jobs  # noqa: A001 — the notebook API reads workbench.jobs.list()
