"""The batch-1 decode loop (workbench.decode) against transformers' generate, on the tiny model.
On a CPU the loop runs its step eagerly; the CUDA-graph capture is exercised by bench/perf.py."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from workbench import decode


@pytest.fixture(scope="module")
def inputs(tiny):
    conv = tiny.chat(log=False)
    turn = conv._prepare("<image>Describe the image.", [Image.new("RGB", (900, 600), "teal")], [], conv.settings)
    return conv._inputs(turn)


def test_greedy_matches_generate_across_turns(tiny, inputs):
    dec = decode.GraphDecoder(tiny.model)
    assert dec.mode == "eager"
    want = tiny.model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    seen = []
    for _ in range(2):  # the second turn reuses (resets) the same cache
        seen.clear()
        got = dec.generate(inputs, max_new_tokens=12, stop_ids=[], stop_event=threading.Event(),
                           on_token=lambda t: seen.append(int(t)))
        assert got.tolist() == want.tolist()
    assert seen == want[0, inputs["input_ids"].shape[1]:].tolist()
    need = inputs["input_ids"].shape[1] + 12
    assert dec.capacity % decode.CAPACITY_STEP == 0 and need <= dec.capacity < need + decode.CAPACITY_STEP


def test_stops_at_stop_id_and_on_request(tiny, inputs):
    dec = decode.GraphDecoder(tiny.model)
    n = inputs["input_ids"].shape[1]
    free = dec.generate(inputs, max_new_tokens=6, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
    third = int(free[0, n + 2])
    stopped = dec.generate(inputs, max_new_tokens=6, stop_ids=[third], stop_event=threading.Event(), on_token=lambda t: None)
    assert stopped.tolist() == free[:, : n + 3].tolist()  # the stop token is kept, nothing after it
    event = threading.Event()
    event.set()
    once = dec.generate(inputs, max_new_tokens=6, stop_ids=[], stop_event=event, on_token=lambda t: None)
    assert once.shape[1] == n + 1


def test_sampling_and_penalty_follow_the_seed(tiny, inputs):
    dec = decode.GraphDecoder(tiny.model)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(dec.generate(inputs, max_new_tokens=8, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None,
                                 do_sample=True, temperature=0.9, top_p=0.8, repetition_penalty=1.3).tolist())
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == inputs["input_ids"].shape[1] + 8


def test_growing_the_cache(tiny, inputs):
    dec = decode.GraphDecoder(tiny.model)
    dec.generate(inputs, max_new_tokens=2, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
    first = dec.capacity
    long = dec.generate(inputs, max_new_tokens=first, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
    assert dec.capacity > first and dec.capacity >= inputs["input_ids"].shape[1] + first
    assert long.shape[1] == inputs["input_ids"].shape[1] + first


def test_only_single_gpu_sessions_use_it(tiny):
    assert decode.for_session(tiny) is None  # a CPU session generates with transformers' generate


def test_decode_attention_matches_sdpa_with_grouped_heads():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 1, 16, generator=gen)
    k, v = torch.randn(2, 1, 2, 40, 16, generator=gen)  # 2 key/value heads for 6 query heads
    mask = torch.zeros(1, 1, 1, 40, dtype=torch.bool)
    mask[..., :29] = True  # a static cache: slots past the current position are empty
    k[:, :, 29:], v[:, :, 29:] = 1e4, 1e4  # and must not count, whatever they hold
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    got, _ = decode.decode_attention(module, q, k, v, mask, scaling=0.25)
    assert got.shape == want.shape == (1, 1, 6, 16)
    assert torch.allclose(got, want, atol=1e-5)
    additive = torch.zeros(1, 1, 1, 40).masked_fill(~mask, float("-inf"))
    assert torch.allclose(decode.decode_attention(module, q, k, v, additive, scaling=0.25)[0], want, atol=1e-5)
    wide = torch.randn(1, 6, 3, 16, generator=gen)  # several queries (a prefill): plain SDPA
    assert torch.equal(decode.decode_attention(module, wide, k, v, None, scaling=0.25)[0],
                       sdpa_attention_forward(module, wide, k, v, None, scaling=0.25)[0])


def test_a_warm_up_step_is_undone(tiny, inputs):
    """Capturing the graph runs the step once beforehand; transformers' static cache moves its own
    write position on every forward, so without the rewind the rest of that answer would write
    each token one slot past where it is read (wrong answers on the GPU, seen in step_probe)."""

    class WarmedEveryStep(decode.GraphDecoder):
        def _next_logits(self):
            self._warm_up(2)
            return self._advance()

    want = decode.GraphDecoder(tiny.model).generate(inputs, max_new_tokens=10, stop_ids=[],
                                                     stop_event=threading.Event(), on_token=lambda t: None)
    dec = WarmedEveryStep(tiny.model)
    got = dec.generate(inputs, max_new_tokens=10, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
    assert got.tolist() == want.tolist()
    written = {int(layer.cumulative_length) for layer in dec.cache.layers}
    assert written == {got.shape[1] - 1}  # every token but the last (never fed back) is in the cache once


def test_compile_applies_to_the_captured_gpu_step_only(tiny, inputs):
    dec = decode.GraphDecoder(tiny.model, compile=True)
    assert dec.mode == "eager" and not dec.compiled  # a CPU: the eager step, uncompiled, as before
    assert not dec.prefill_compiled
    want = tiny.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    got = dec.generate(inputs, max_new_tokens=6, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
    assert got.tolist() == want.tolist()
    assert dec.capacity % decode.CAPACITY_STEP == 0 and dec.capacity < inputs["input_ids"].shape[1] + 6 + decode.CAPACITY_STEP


@pytest.mark.slow
def test_the_compiled_prefill_gives_generates_tokens_and_comes_off_again(tiny, inputs):
    """compile=True's prefill (on a GPU): the language model and the vision tower compiled in place
    for dynamic shapes. Here on the CPU, where every step then runs through them."""
    dec = decode.GraphDecoder(tiny.model)
    want = tiny.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    modules = [tiny.model.model.language_model, tiny.model.model.vision_tower]
    dec.compile_prefill(True)
    try:
        assert all(m._compiled_call_impl is not None for m in modules)
        got = dec.generate(inputs, max_new_tokens=6, stop_ids=[], stop_event=threading.Event(), on_token=lambda t: None)
        assert got.tolist() == want.tolist()
    finally:
        dec.compile_prefill(False)
    assert not dec.prefill_compiled and all(m._compiled_call_impl is None for m in modules)
