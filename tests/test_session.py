import gc
import json
import weakref

import pytest
import torch

import workbench
from workbench.convert import ConversionError
import workbench.session as S
from workbench.errors import EnvironmentProblem, ModelNotFoundError, PlacementError, UserInputError


def test_default_model_is_the_tiny_one(tiny):
    assert tiny.spec.name == "tiny"
    assert type(tiny.model).__name__ == "InternVLForConditionalGeneration"
    assert type(tiny.processor).__name__ == "InternVLProcessor"
    tok = tiny.tokenizer
    for t in ("<img>", "</img>", "<IMG_CONTEXT>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id, t
    assert tiny.model.config.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert tiny.dtype == torch.float32 and tiny.input_device.type == "cpu"


def test_loading_by_directory_and_several_named_sessions(tiny_dir):
    a = workbench.load(tiny_dir, name="a")
    b = workbench.load(str(tiny_dir), name="b", dtype="bf16")
    try:
        assert {"a", "b"} <= set(workbench.sessions())
        assert b.model.dtype == torch.bfloat16
        assert S.get("a") is a
        with pytest.raises(UserInputError, match="already loaded"):
            workbench.load(tiny_dir, name="a")
    finally:
        workbench.unload("a")
        workbench.unload("b")
    assert "a" not in workbench.sessions()
    with pytest.raises(UserInputError, match="No session named 'a'"):
        S.get("a")


def test_unload_really_frees_the_model(tiny_dir):
    s = workbench.load(tiny_dir, name="to-free")
    ref = weakref.ref(s.model)
    s.unload()
    del s
    gc.collect()
    assert ref() is None, "something still holds the model"


def test_memory_report_has_cpu(tiny):
    rows = workbench.memory_report()
    assert rows[-1].device == "cpu" and 0 < rows[-1].used < rows[-1].total
    assert "GiB" in str(rows[-1])


def test_unknown_names_and_non_model_directories(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Unknown model name 'internvl-9000'"):
        workbench.load("internvl-9000")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        workbench.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotFoundError, match="not an InternVL model"):
        workbench.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    with pytest.raises(ModelNotFoundError, match="no weights"):
        workbench.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}))
    # An original-format folder is converted on load; one without weights says so.
    with pytest.raises(ConversionError, match="has no model.safetensors .*not a complete checkpoint"):
        workbench.load(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelNotFoundError, match="not valid JSON"):
        workbench.load(tmp_path)


def test_unreachable_hub_id_says_how_to_download():
    with pytest.raises(ModelNotFoundError, match=r"huggingface-cli download OpenGVLab/InternVL3-1B-hf --local-dir DIR.*pass its path"):
        workbench.load("internvl3-1b-hf")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download someone/unknown-model"):
        workbench.load("someone/unknown-model")


def test_requests_are_checked_before_weights_load(tiny_dir):
    with pytest.raises(UserInputError, match="Unknown dtype"):
        workbench.load(tiny_dir, dtype="fp8")
    with pytest.raises(UserInputError, match="attention implementation"):
        workbench.load(tiny_dir, attn_implementation="fast")
    with pytest.raises(UserInputError, match="not both"):
        workbench.load(tiny_dir, max_memory=["1GB"], device_map={"": 0})
    with pytest.raises(UserInputError, match="quantization must be"):
        workbench.load(tiny_dir, quantization="int3")
    with pytest.raises(UserInputError, match="not a PEFT adapter"):
        workbench.load(tiny_dir, adapter=tiny_dir, name="adapter-check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_gpu_only_requests_on_a_cpu_machine(tiny_dir):
    with pytest.raises(PlacementError, match="no GPU is visible"):
        workbench.load(tiny_dir, max_memory=["15GB", "15GB"])
    with pytest.raises(PlacementError, match=r"names GPU\(s\) \[0, 1\].*0 visible"):
        workbench.load(tiny_dir, device_map={"model": 0, "lm_head": 1})
    with pytest.raises(EnvironmentProblem, match="needs a CUDA GPU"):
        workbench.load(tiny_dir, quantization="int8")
    with pytest.raises(EnvironmentProblem, match="stores int8 weights"):
        workbench.load("internvl-chat-v1_5-int8")


def test_explicit_cpu_device_map_works(tiny_dir):
    s = workbench.load(tiny_dir, device_map={"": "cpu"}, name="cpu-map")
    try:
        assert s.input_device.type == "cpu"
    finally:
        s.unload()


def test_adapter_attaches(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    s = workbench.load(tiny_dir, adapter=tmp_path / "adapter", name="with-adapter")
    try:
        assert type(s.model).__name__ == "PeftModel" and s.adapter.endswith("adapter")
        ids = base.get_input_embeddings().weight.new_zeros((1, 6), dtype=torch.long) + 7
        with torch.no_grad():
            with_adapter = s.model(input_ids=ids).logits
            with s.model.disable_adapter():
                without = s.model(input_ids=ids).logits
        assert not torch.allclose(with_adapter, without), "the adapter changes the output"
        assert s.chat(log=False).ask("hello", max_new_tokens=3) is not None
    finally:
        s.unload()


def test_quantized_loading_keeps_tower_projector_and_head_in_16_bit(tiny):
    """transformers decides which linear layers bitsandbytes replaces with should_convert_module; the
    workbench's skip list, applied to the real module names, leaves exactly the language model's."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from workbench.session import KEEP_UNQUANTIZED

    linear = [n for n, m in tiny.model.named_modules() if isinstance(m, torch.nn.Linear)]
    converted = {n for n in linear if should_convert_module(n, KEEP_UNQUANTIZED)}
    assert converted and all(n.startswith("model.language_model.") for n in converted)
    assert {n for n in linear if n.startswith("model.language_model.")} == converted
