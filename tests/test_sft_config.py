"""Fine-tune settings: every bad combination named with its fix before anything loads; the
launch command for each process count."""

import pytest

from workbench import jobs
from workbench.errors import UserInputError
from workbench.sft_config import SFTConfig


def cfg(**kw):
    return SFTConfig(dataset=["train.jsonl"], **kw)


def test_process_counts_are_checked_against_the_gpus():
    cfg(processes=2).check(gpus=0)  # CPU data parallel (gloo) is allowed
    cfg(processes=2).check(gpus=2)
    with pytest.raises(UserInputError, match=r"processes 4 but 2 GPU\(s\) are visible: set processes ≤ 2"):
        cfg(processes=4).check(gpus=2)
    with pytest.raises(UserInputError, match="processes must be ≥ 0"):
        cfg(processes=-1).check(gpus=0)


def test_launch_command_for_each_process_count(tmp_path):
    job = jobs.Job("j", tmp_path)

    def launch_args(gpus, processes):
        cmd = jobs.command(job, gpus, processes)
        return cmd[cmd.index("accelerate.commands.launch") + 1: cmd.index("-m", 3)]

    one_cpu = launch_args(0, 0)
    assert "--cpu" in one_cpu and one_cpu[one_cpu.index("--num_processes") + 1] == "1" and "--multi_gpu" not in one_cpu
    two_cpu = launch_args(0, 2)  # torchrun's launcher: accelerate's --cpu would start a single process
    assert "--cpu" not in two_cpu and "--multi_gpu" in two_cpu and two_cpu[two_cpu.index("--num_processes") + 1] == "2"
    every_gpu = launch_args(4, 0)
    assert "--multi_gpu" in every_gpu and every_gpu[every_gpu.index("--num_processes") + 1] == "4"
    ports = {launch_args(2, 2)[launch_args(2, 2).index("--main_process_port") + 1] for _ in range(3)}
    assert all(p.isdigit() for p in ports)
    assert launch_args(1, 0)[launch_args(1, 0).index("--num_processes") + 1] == "1" and "--multi_gpu" not in launch_args(1, 0)


def test_a_checkpoint_still_being_written_is_not_resumed_from(tmp_path):
    from workbench import sft

    for step, complete in ((2, True), (4, True), (6, False)):  # 6: cut off by a cancel mid-write
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert [p.name for p in sft.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert sft.last_checkpoint(tmp_path).name == "checkpoint-4"


def test_deepspeed_presets_and_a_single_process(tmp_path):
    import json

    from workbench import sft

    two, three = sft._deepspeed(cfg(deepspeed="zero2")), sft._deepspeed(cfg(deepspeed="zero3"))
    assert two["zero_optimization"]["stage"] == 2 and "stage3_gather_16bit_weights_on_model_save" not in two["zero_optimization"]
    # without it a ZeRO-3 run's final folder holds only ZeRO's shards, no model to load (seen on the H200)
    assert three["zero_optimization"] == {**two["zero_optimization"], "stage": 3,
                                          "stage3_gather_16bit_weights_on_model_save": True}
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert sft._deepspeed(cfg(deepspeed=str(own))) == {"zero_optimization": {"stage": 1}}
    assert sft._deepspeed(cfg()) is None
    single = jobs.rendezvous(cfg(deepspeed="zero2"), gpus=1)
    assert single["WORLD_SIZE"] == "1" and single["RANK"] == "0" and single["MASTER_PORT"].isdigit()
    assert jobs.rendezvous(cfg(deepspeed="zero2"), gpus=2) == {}  # torchrun sets them for several processes
    assert jobs.rendezvous(cfg(), gpus=1) == {}


def test_checkpoint_share_is_checked():
    cfg(gradient_checkpointing=True, checkpoint_share=0.5).check(gpus=0)
    with pytest.raises(UserInputError, match=r"checkpoint_share must be in \(0, 1\].*set gradient_checkpointing false"):
        cfg(gradient_checkpointing=True, checkpoint_share=0).check(gpus=0)
    with pytest.raises(UserInputError, match="checkpoint_share must be in"):
        cfg(gradient_checkpointing=True, checkpoint_share=1.5).check(gpus=0)
    with pytest.raises(UserInputError, match="without gradient_checkpointing does nothing: set gradient_checkpointing true"):
        cfg(checkpoint_share=0.5).check(gpus=0)
