"""Packed training steps (workbench.packing) against transformers' own loss, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench import data, packing, sft

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def encoded(tiny_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    samples = data.load([EXAMPLES / "shapes-grounding.jsonl"])[:6]
    enc = [data.encode(s, proc, max_length=4096, max_tiles=2) for s in samples]
    assert len({len(e.input_ids) for e in enc}) > 1  # unequal lengths: padding vs packing differ
    return enc


def fresh_model(tiny_dir):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_step_equals_padded_batch(tiny_dir, encoded):
    model = fresh_model(tiny_dir)
    batch = sft.Collator(0)(encoded[:3])
    padded = {k: v for k, v in batch.items() if k != "answer_positions"}
    ref = model(**padded).loss  # transformers' loss over full logits, padded batch
    ref.backward()
    want = grads(model)
    model.zero_grad()
    packing.use_packed_attention(model)
    value = packing.loss(model, packing.PackingCollator(0)(encoded[:3]))
    value.backward()
    got = grads(model)
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # the vision tower keeps its own (non-causal) attention
    assert model.config.vision_config._attn_implementation != packing.PACKED_ATTENTION


def test_samples_do_not_see_each_other(tiny_dir, encoded):
    model = fresh_model(tiny_dir)
    packing.use_packed_attention(model)
    alone = packing.loss(model, packing.PackingCollator(0)(encoded[1:2])).item()
    first = packing.PackingCollator(0)(encoded[0:2])
    # the same second sample after another one: its own loss is unchanged
    n0 = len(encoded[0].input_ids)
    labels = first["labels"].clone()
    labels[0, :n0] = -100
    with_neighbour = packing.loss(model, {**first, "labels": labels}).item()
    assert with_neighbour == pytest.approx(alone, rel=1e-5)


def test_collator_layout(encoded):
    batch = packing.PackingCollator(0)(encoded[:2])
    n0, n1 = len(encoded[0].input_ids), len(encoded[1].input_ids)
    assert batch["input_ids"].shape == (1, n0 + n1)
    assert batch["packed_bounds"] == (0, n0, n0 + n1)
    assert batch["position_ids"][0, n0].item() == 0 and batch["position_ids"][0, -1].item() == n1 - 1
    assert batch["labels"][0, 0].item() == -100 and batch["labels"][0, n0].item() == -100
    assert batch["pixel_values"].shape[0] == encoded[0].pixel_values.shape[0] + encoded[1].pixel_values.shape[0]


def test_answer_positions_are_before_labels():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    assert packing.answer_positions(labels).tolist() == [0, 1, 2]


def test_collators_bring_the_answer_positions_from_the_host(tiny_dir, encoded):
    """The loss then needs no nonzero() on the GPU (a stall per step); the padded loss with them
    equals the loss that finds them itself."""
    for batch in (sft.Collator(0)(encoded[:3]), packing.PackingCollator(0)(encoded[:3])):
        assert torch.equal(batch["answer_positions"], packing.answer_positions(batch["labels"]))
    model = fresh_model(tiny_dir)
    batch = sft.Collator(0)(encoded[:3])
    without = {k: v for k, v in batch.items() if k != "answer_positions"}
    assert packing.loss(model, batch).item() == pytest.approx(packing.loss(model, without).item(), rel=1e-6)


def test_saved_checkpoints_do_not_name_the_packed_attention(tiny_dir, tmp_path):
    model = fresh_model(tiny_dir)
    packing.use_packed_attention(model)
    model.save_pretrained(tmp_path)
    assert packing.PACKED_ATTENTION not in (tmp_path / "config.json").read_text()


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_for_any_length(tiny_dir, encoded):
    from workbench.sft_config import SFTConfig

    model = fresh_model(tiny_dir)
    packing.use_packed_attention(model)
    model = sft._trainable(model, SFTConfig.from_yaml(EXAMPLES.parent / "recipes" / "demo-lora.yaml", {"dataset": ["x"]}))
    a, b = packing.PackingCollator(0)(encoded[:3]), packing.PackingCollator(0)(encoded[3:])
    eager = [packing.loss(model, a).item(), packing.loss(model, b).item()]
    from torch._dynamo.utils import counters

    counters.clear()
    assert packing.compile_layers(model) == model.config.text_config.num_hidden_layers
    compiled = [packing.loss(model, a).item(), packing.loss(model, b).item()]  # two lengths, one compile
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert not counters["graph_break"]  # the packed attention is traced inside each layer, not cut out of it


def _step_with_checkpointing(model, batch):
    """A LoRA step as the Trainer runs it (checkpointing, input grads on), recording whether the
    vision tower's output carries autograd; returns (that, the gradients)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # hooks the vision tower's patch embeddings too (transformers does)
    model.train()
    seen = {}
    tower = model.get_base_model().model.vision_tower
    handle = tower.register_forward_hook(lambda m, i, out: seen.update(grad=out.last_hidden_state.requires_grad))
    model.zero_grad()
    packing.loss(model, batch).backward()
    handle.remove()
    return seen["grad"], grads(model)


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_a_frozen_vision_tower_runs_without_autograd(tiny_dir, encoded, freeze_vision):
    from workbench.sft_config import SFTConfig

    cfg = SFTConfig.from_yaml(EXAMPLES.parent / "recipes" / "demo-lora.yaml",
                              {"dataset": ["x"], "freeze_vision": freeze_vision, "freeze_projector": False,
                               "lora_dropout": 0.0})  # no dropout: the two steps compare exactly
    model = sft._trainable(fresh_model(tiny_dir), cfg)
    packing.use_packed_attention(model)
    batch = packing.PackingCollator(0)(encoded[:2])
    tracked, want = _step_with_checkpointing(model, batch)
    assert tracked  # what transformers does on its own: autograd through the frozen tower
    assert packing.frozen_vision_without_autograd(model) is freeze_vision
    tracked, got = _step_with_checkpointing(model, batch)
    assert tracked is not freeze_vision
    assert got.keys() == want.keys()
    assert any("multi_modal_projector" in n for n in got)  # a trained projector still learns
    assert any("vision_tower" in n for n in got) is not freeze_vision  # LoRA on the tower when it trains
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert packing.frozen_vision_without_autograd(model, enabled=False) is False
    assert _step_with_checkpointing(model, batch)[0]


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_a_share_of_the_layers_is_checkpointed(tiny_dir, encoded, share):
    """Checkpointed layers run their forward twice per step (again in backward), the others once;
    the gradients are those of a step without checkpointing."""
    from workbench.sft_config import SFTConfig

    cfg = SFTConfig.from_yaml(EXAMPLES.parent / "recipes" / "demo-lora.yaml", {"dataset": ["x"], "lora_dropout": 0.0})
    model = sft._trainable(fresh_model(tiny_dir), cfg)
    packing.use_packed_attention(model)
    model.train()
    batch = packing.PackingCollator(0)(encoded[:2])
    layers = model.get_base_model().model.language_model.layers
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):  # on the MLP: transformers may keep the layer's own hooks out of the recompute
        layer.mlp.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))

    def step():
        calls[:] = [0] * len(layers)
        model.zero_grad()
        packing.loss(model, batch).backward()
        return grads(model)

    want = step()
    assert calls == [1] * len(layers)
    n = packing.checkpoint_layers(model, share)
    assert n == (len(layers) if share == 1 else len(layers) // 2)
    got = step()
    assert calls == [2 if layer.gradient_checkpointing else 1 for layer in layers]
    assert sum(c == 2 for c in calls) == n
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_layers_with_half_of_them_checkpointed(tiny_dir, encoded):
    """The recipe's compile: true with checkpoint_share 0.5: the same loss and gradients as eager
    without checkpointing, and each layer one graph."""
    from torch._dynamo.utils import counters

    from workbench.sft_config import SFTConfig

    cfg = SFTConfig.from_yaml(EXAMPLES.parent / "recipes" / "demo-lora.yaml", {"dataset": ["x"], "lora_dropout": 0.0})
    model = sft._trainable(fresh_model(tiny_dir), cfg)
    packing.use_packed_attention(model)
    model.train()
    batch = packing.PackingCollator(0)(encoded[:3])

    def step():
        model.zero_grad()
        value = packing.loss(model, batch)
        value.backward()
        return value.item(), grads(model)

    want_loss, want = step()
    counters.clear()
    assert packing.checkpoint_layers(model, 0.5) == 1
    packing.compile_layers(model)
    got_loss, got = step()
    assert got_loss == pytest.approx(want_loss, rel=1e-4)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5, msg=name)
    assert not counters["graph_break"]
