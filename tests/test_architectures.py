import pytest
import torch

from workbench.architectures import ARCHS, count_parameters, random_model
from workbench.errors import ModelNotFoundError

# Published sizes (billions of parameters); random-init builds must be within 1 %.
PUBLISHED = {"internvl2-1b": 0.94, "internvl2-2b": 2.2, "internvl2-8b": 8.1, "internvl2-26b": 25.5,
             "internvl2-40b": 40.0, "internvl2-llama3-76b": 76.0, "internvl-chat-v1_5": 25.5,
             "internvl2-4b": 4.15, "mini-internvl-chat-4b-v1_5": 4.15, "mini-internvl-chat-2b-v1_5": 2.2}


@pytest.mark.parametrize("name,billions", PUBLISHED.items())
def test_parameter_counts_match_published(name, billions):
    model = random_model(name, device="meta")
    assert count_parameters(model) / 1e9 == pytest.approx(billions, rel=0.01)


def test_layouts_follow_the_reference():
    m = random_model("internvl2-26b")
    v = m.config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.norm_type, v.use_qk_norm, v.attention_bias) == (3200, 45, "rms_norm", True, False)
    t = m.config.text_config
    assert (t.model_type, t.hidden_size, t.num_hidden_layers, t.num_key_value_heads) == ("llama", 6144, 48, 8)
    assert m.config.tie_word_embeddings is False
    assert m.lm_head.weight is not m.get_input_embeddings().weight
    small = random_model("internvl2-1b").config
    assert (small.text_config.model_type, small.vision_config.norm_type, small.vision_config.attention_bias) == ("qwen2", "layer_norm", True)
    assert set(ARCHS) >= {"internvl2-4b", "mini-internvl-chat-4b-v1_5", "internvl3-8b"}


def test_random_model_can_be_real():
    m = random_model("tiny", dtype=torch.float32, device="cpu")
    assert all(p.device.type == "cpu" for p in m.parameters())


def test_checkpoints_without_builtin_architecture_are_refused():
    with pytest.raises(ModelNotFoundError, match="config comes with the checkpoint"):
        random_model("internvl3-78b-hf")
