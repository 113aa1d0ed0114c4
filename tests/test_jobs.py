"""Fine-tunes as background `accelerate launch` jobs on the demo model, tracked by a real MLflow
server: finish, cancel and resume, crash, a new kernel finding jobs, merge, pyfunc, CLI."""

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import torch

import workbench
from conftest import EXAMPLE, REPO
from workbench import jobs
from workbench.errors import UserInputError

pytestmark = pytest.mark.slow


def rest(server, endpoint, **params):
    url = f"{server.uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def metric_steps(server, run_id, key):
    return [m["step"] for m in rest(server, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])]


def test_finished_run_is_tracked(finished, mlflow_server):
    run = rest(mlflow_server, "runs/get", run_id=finished.run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["sft_type"] == "lora" and params["lora_rank"] == "16" and params["max_steps"] == "4"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "samples_per_s", "eval_loss",
            "eval_grounding_acc50"} <= metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), metrics
    assert metric_steps(mlflow_server, finished.run_id, "loss") == [1, 2, 3, 4]
    assert metric_steps(mlflow_server, finished.run_id, "eval_grounding_acc50") == [2, 4]
    inputs = run["inputs"]["dataset_inputs"]
    assert {i["dataset"]["name"] for i in inputs} == {"train.jsonl", "val.jsonl"}
    files = {f["path"] for f in rest(mlflow_server, "artifacts/list", run_id=finished.run_id,
                                     path="checkpoints/checkpoint-2")["files"]}
    assert "checkpoints/checkpoint-2/adapter_model.safetensors" in files
    samples = rest(mlflow_server, "artifacts/list", run_id=finished.run_id, path="samples")["files"]
    assert len(samples) == 2  # one folder of drawn answers per checkpoint
    versions = rest(mlflow_server, "registered-models/get-latest-versions", name="test-demo-lora")["model_versions"]
    tags = {t["key"]: t["value"] for t in versions[0]["tags"]}
    assert tags["source_run"] == finished.run_id and tags["checkpoint_step"] == "4" and tags["base_model"] == "demo"


def test_registered_model_answers_through_pyfunc(finished, mlflow_server):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/test-demo-lora/1")
    answers = model.predict({"question": "Where is the red circle?", "images": [str(EXAMPLE)]})
    assert len(answers) == 1 and isinstance(answers[0], str) and answers[0]


def test_merge_equals_base_plus_adapter(finished):
    from transformers import AutoModelForImageTextToText

    merged_dir = finished.merge()
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    adapted = workbench.load("demo", adapter=finished.output_dir / "final", name="merge-check")
    try:
        conv = adapted.chat(log=False)
        inputs = conv._inputs(conv._prepare("Where is the red circle?", [EXAMPLE], [], conv.settings))
        with torch.no_grad():
            a = adapted.model(**inputs).logits
            b = merged(**inputs).logits
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    finally:
        workbench.unload("merge-check")
    session = workbench.load(merged_dir, name="merged")  # and in the session manager
    workbench.unload(session)


def test_merged_models_are_logged_and_registered(finished, mlflow_server, tmp_path):
    """job.merge() and `workbench export` both log the merged model to the fine-tune's run, register
    it with its lineage, and leave the run's own status alone."""
    finished.merge()
    out = run_cli("export", "--ckpt", str(finished.output_dir / "checkpoint-2"), "--merge-lora", "--out", str(tmp_path / "m2"))
    assert out.returncode == 0 and finished.run_id in out.stdout, out.stderr
    found = rest(mlflow_server, "model-versions/search", filter="name='workbench-demo-merged'")["model_versions"]
    steps = {t["value"] for v in found for t in v.get("tags", []) if t["key"] == "checkpoint_step"}
    assert {"final", "2"} <= steps
    assert all(v["run_id"] == finished.run_id for v in found)
    assert rest(mlflow_server, "runs/get", run_id=finished.run_id)["run"]["info"]["status"] == "FINISHED"


def test_a_new_kernel_finds_the_job(finished):
    code = "from workbench import jobs; print([(j.id, j.state) for j in jobs.list()])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (finished.id, "finished") in eval(out.stdout), out.stderr


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_cancel_keeps_checkpoint_and_resume_continues(dataset, demo_dir, mlflow_server):
    """Driven through the jobs panel's buttons, which follow the running job on their own."""
    from workbench.ui.jobs import JobsPanel

    panel = JobsPanel(refresh_s=0.3)
    job = panel.launch(REPO / "recipes" / "demo-lora.yaml", dataset=[str(dataset / "train.jsonl")],
                       max_steps=60, save_steps=10, register_as="test-resume")
    assert panel.selected == job.id and not panel.cancel_button.disabled
    wait_for(lambda: "last checkpoint" in panel.summary.value or job.state not in ("starting", "running"), 300,
             "a checkpoint")
    assert panel.state == "running", job.log_tail()
    assert panel.eta.value.startswith("ETA") and 0 < panel.progress.value < 60 and panel.progress.max == 60
    panel.cancel_button.click()
    wait_for(lambda: not panel.busy, 60, "the cancel")
    assert job.state == "killed" and panel.state == "killed" and "last checkpoint kept" in panel.message.value
    assert rest(mlflow_server, "runs/get", run_id=job.run_id)["run"]["info"]["status"] == "KILLED"
    kept = job.checkpoints()
    assert kept and int(kept[-1].name.split("-")[1]) < 60
    logged = metric_steps(mlflow_server, job.run_id, "loss")
    assert panel.cancel_button.disabled and not panel.resume_button.disabled
    panel.resume_button.click()
    wait_for(lambda: not panel.busy, 60, "the resume")
    assert panel.error == "", panel.error
    assert job.wait(600) == "finished", job.log_tail()
    wait_for(lambda: panel.state == "finished", 30, "the panel to follow the job to its end")
    assert panel.progress.value == 60
    panel.close()
    steps = metric_steps(mlflow_server, job.run_id, "loss")
    assert sorted(steps) == list(range(1, 61)) and len(steps) == len(set(steps)), "no step logged twice"
    assert steps[: len(logged)] == logged
    assert rest(mlflow_server, "runs/get", run_id=job.run_id)["run"]["info"]["status"] == "FINISHED"


def test_two_processes_log_once_and_resume_on_one(dataset, demo_dir, mlflow_server):
    """Data parallel on the CPU: two processes over gloo (the DDP path GPUs take over NCCL), with
    half the layers checkpointed as the 8B recipe has it. Only rank 0 records (no step twice in
    MLflow); the checkpoint resumes on one process."""
    job = jobs.launch(REPO / "recipes" / "demo-lora.yaml", dataset=[str(dataset / "train.jsonl")],
                      max_steps=16, save_steps=4, processes=2, gradient_checkpointing=True, checkpoint_share=0.5,
                      register_as="test-ddp")
    cmd = job.record["command"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    wait_for(lambda: job.checkpoints() or job.state not in ("starting", "running"), 600, "a checkpoint")
    assert job.state == "running", job.log_tail()
    half = re.search(r"gradient checkpointing: (\d+) of (\d+) language-model layers", job.log_tail(100_000))
    assert half and 2 * int(half[1]) == int(half[2]), job.log_tail()
    job.cancel()
    assert job.state == "killed"
    first = metric_steps(mlflow_server, job.run_id, "loss")
    assert first and len(first) == len(set(first)), "rank 1 logs nothing"
    tags = {t["key"]: t["value"] for t in rest(mlflow_server, "runs/get", run_id=job.run_id)["run"]["data"]["tags"]}
    assert tags["workbench.processes"] == "2"
    samples = rest(mlflow_server, "metrics/get-history", run_id=job.run_id, metric_key="samples_per_s")["metrics"]
    assert samples and all(m["value"] > 0 for m in samples)

    with pytest.raises(UserInputError, match="processes must be"):
        job.resume(processes=-1)
    job.resume(processes=1)
    assert job.wait(900) == "finished", job.log_tail()
    assert job.record["command"][job.record["command"].index("--num_processes") + 1] == "1"
    steps = metric_steps(mlflow_server, job.run_id, "loss")
    assert sorted(steps) == list(range(1, 17)) and len(steps) == len(set(steps)), "no step logged twice"
    run = rest(mlflow_server, "runs/get", run_id=job.run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["workbench.processes"] == "1"
    import mlflow

    found = mlflow.MlflowClient(mlflow_server.uri).search_runs([run["info"]["experiment_id"]],
                                                                f"tags.`workbench.job` = '{job.id}'")
    assert len(found) == 1, "one MLflow run for the job, across both process counts"


def test_crash_marks_the_run_failed_with_the_error(dataset, demo_dir, mlflow_server, tmp_path):
    rows = [{"query": "What is this?", "response": "A shape.", "images": ["http://127.0.0.1:9/gone.png"]}]
    (tmp_path / "crash.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job = jobs.launch(model="demo", dataset=[str(tmp_path / "crash.jsonl")], max_steps=2)
    assert job.wait(300) == "failed"
    run = rest(mlflow_server, "runs/get", run_id=job.run_id)["run"]
    assert run["info"]["status"] == "FAILED"
    error = {t["key"]: t["value"] for t in run["data"]["tags"]}["error"]
    assert "Could not fetch http://127.0.0.1:9/gone.png" in error


def test_bad_settings_and_data_fail_before_launch(dataset, tmp_path):
    with pytest.raises(UserInputError) as info:
        jobs.launch(model="demo", dataset=[], sft_type="lora", freeze_llm=True, lora_rank=0, learning_rate=0,
                    dtype="bf16-mixed")
    for needle in ("no dataset", "lora_rank must be", "freeze_llm with LoRA", "learning_rate must be > 0",
                   "dtype bf16-mixed training needs a GPU here; use dtype fp32"):
        assert needle in str(info.value)
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\nnot json\n')
    with pytest.raises(UserInputError, match=r"bad.jsonl:1:.*\n.*bad.jsonl:2:"):
        jobs.launch(model="demo", dataset=[str(tmp_path / "bad.jsonl")])
    with pytest.raises(UserInputError, match="did you mean lora_rank"):
        jobs.launch(model="demo", dataset=[str(dataset / "train.jsonl")], lora_rnak=4)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=300)


def test_cli_infer_from_checkpoint_and_export(finished, tmp_path):
    out = run_cli("infer", "--ckpt", str(finished.output_dir / "checkpoint-2"), "--query", "Where is the red circle?",
                  "--images", str(EXAMPLE), "--max-new-tokens", "30")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    out = run_cli("export", "--ckpt", str(finished.output_dir / "checkpoint-4"), "--merge-lora", "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "processor_config.json").exists()


def test_cli_data_check_reports_every_line(dataset, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\n{"query": "<image>", "response": "r"}\n' +
                                        (dataset / "train.jsonl").read_text().splitlines()[0].replace("shapes.png", str(dataset / "shapes.png")) + "\n")
    out = run_cli("data", "check", str(tmp_path / "bad.jsonl"), "--max-length", "1024")
    assert out.returncode == 1
    assert "bad.jsonl:1:" in out.stdout and "bad.jsonl:2:" in out.stdout and "2 problem(s)" in out.stdout
    assert "samples 1 · images 1" in out.stdout
