import pytest

from workbench import catalog
from workbench.errors import ModelNotFoundError

EXPECTED = ["internvl-chat-v1_5", "internvl-chat-v1_5-int8", "mini-internvl-chat-2b-v1_5", "mini-internvl-chat-4b-v1_5",
            "internvl2-1b", "internvl2-2b", "internvl2-4b", "internvl2-8b", "internvl2-26b", "internvl2-40b",
            "internvl2-llama3-76b"]


def test_every_name_users_type_is_known():
    for name in EXPECTED:
        spec = catalog.get(name)
        assert spec.hub_id.startswith("OpenGVLab/")
        assert spec.checkpoint_format == "original"
    natives = [s for s in catalog.CATALOG.values() if s.checkpoint_format == "native" and s.hub_id]
    assert {s.family for s in natives} >= {"internvl2_5", "internvl3", "internvl3_5"}
    assert all(s.hub_id.lower().endswith("-hf") for s in natives)


def test_family_facts():
    v15 = catalog.get("internvl-chat-v1_5")
    assert (v15.multi_turn_images, v15.max_tiles, v15.template, v15.llm_type) == (False, 12, "internlm2-chat", "internlm2")
    assert catalog.get("internvl-chat-v1_5-int8").quantized == "int8"
    assert catalog.get("mini-internvl-chat-4b-v1_5").template == "phi3-chat"
    assert (catalog.get("internvl2-1b").llm_type, catalog.get("internvl2-1b").template) == ("qwen2", "Hermes-2")
    assert catalog.get("internvl2-8b").max_tiles == 6 and catalog.get("internvl2-8b").multi_turn_images
    assert catalog.get("internvl2-2b").system_prompt and "InternVL" in catalog.get("internvl2-2b").system_prompt


def test_lookup_accepts_hub_ids_and_case():
    assert catalog.lookup("OpenGVLab/InternVL2-2B").name == "internvl2-2b"
    assert catalog.get("InternVL-Chat-V1-5").name == "internvl-chat-v1_5"
    assert catalog.lookup("someone/else") is None


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelNotFoundError, match="internvl2-2b"):
        catalog.get("internvl2-2bb")
