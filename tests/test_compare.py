"""Checkpoints with their evaluation from MLflow, and A/B loading that shares one base model."""

import torch

import workbench
from conftest import EXAMPLE, QUESTION
from workbench import compare


def ours(finished):
    return [c for c in compare.checkpoints() if c.job == finished.id]


def test_checkpoints_carry_their_eval_metrics(finished):
    found = ours(finished)
    assert [c.step for c in found] == [2, 4, None]
    assert {(c.kind, c.base, c.run_id) for c in found} == {("adapter", "demo", finished.run_id)}
    assert set(found[0].metrics) == set(compare.METRICS)  # evaluated at each checkpoint
    assert found[2].metrics == found[1].metrics  # final: the last evaluation
    assert found[0].label == f"{finished.id} · step 2" and found[2].label.endswith("final")
    assert finished.config.experiment in compare.experiments()
    assert compare.checkpoints("no-such-experiment") == []
    fragment = compare.compare_fragment(found[0], found[2])
    assert fragment.startswith("#/experiments/") and fragment.endswith(f"/runs/{finished.run_id}")


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_two_checkpoints_share_one_base_and_each_side_is_its_adapter(finished):
    first, _, final = ours(finished)
    pair = compare.load_pair(first, final)
    try:
        assert pair.shared and pair.owned == ["compare-base"]
        assert pair.a.model._peft is pair.b.model._peft, "one base in memory for both sides"
        assert pair.adapter_parameters > 0 and "shared by both sides" in pair.describe()
        conv = pair.a.chat(log=False)
        inputs = conv._inputs(conv._prepare(QUESTION, [EXAMPLE], [], conv.settings))
        got_a, got_b = logits(pair.a.model, inputs), logits(pair.b.model, inputs)
        for checkpoint, got in ((first, got_a), (final, got_b)):
            alone = workbench.load("demo", adapter=checkpoint.path, name="alone")
            try:
                assert torch.allclose(got, logits(alone.model, inputs), atol=1e-5)
            finally:
                workbench.unload("alone")
        assert isinstance(pair.b.chat(log=False).ask(QUESTION, [EXAMPLE]), str)
    finally:
        pair.unload()
    assert "compare-base" not in workbench.sessions()


def test_base_against_a_checkpoint(finished):
    final = ours(finished)[-1]
    pair = compare.load_pair(compare.BASE, final)
    try:
        base = workbench.load("demo", name="plain")
        try:
            conv = base.chat(log=False)
            inputs = conv._inputs(conv._prepare(QUESTION, [EXAMPLE], [], conv.settings))
            assert torch.allclose(logits(pair.a.model, inputs), logits(base.model, inputs), atol=1e-6)
        finally:
            workbench.unload("plain")
        assert pair.a.adapter is None and pair.b.adapter == str(final.path)
    finally:
        pair.unload()


def test_a_second_pair_gets_its_own_session_names(finished):
    first, _, final = ours(finished)
    one = compare.load_pair(compare.BASE, final)
    two = compare.load_pair(first, final)
    try:
        assert one.owned == ["compare-base"] and two.owned == ["compare2-base"]
        assert two.a.name == "compare2-A"
    finally:
        one.unload()
        two.unload()
