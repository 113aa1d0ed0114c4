"""Fast batch-1 decoding on one GPU: a static KV cache and the decode step replayed as a CUDA graph.

Why not ``model.generate``: at batch 1 a small InternVL's decode step is about a millisecond of GPU
work, and generate's own per-token host work (input preparation, logits processors, stopping
criteria, cache bookkeeping, the compiled step's guards) takes several more; bench/perf.py
measures both in one process. This loop does only what a chat turn needs: one prefill (the head
applied to the last position only), then the same one-token step replayed from a captured graph,
with transformers' own logits processors for sampling and repetition penalty.

The step's attention is ``decode_attention``: at batch 1 and one query it scores the static cache
group by group, so the shared key/value heads of grouped-query attention are read in place.
transformers' SDPA path copies them to every query head first (``repeat_kv``; SDPA's own GQA
mode refuses a mask): about a fifth of an InternVL2-2B step's GPU time at a 4096-token cache,
less at shorter ones (bench/step_probe.py).
With ``compile=True`` the step is compiled before capture, which fuses the hundreds of small
norm, rope and residual kernels the graph otherwise replays one by one; and the prefill runs through
the language model and vision tower compiled for dynamic shapes (``prefill_compiled``): an eager
prefill of a 2B model is ~1 500 kernel launches, which the host, not the GPU, paces. On the
InternVL2-2B shape that took the first text of a 7-tile question from 59 to 40 ms
(bench/step_probe.py ttft). The compiles are paid once: the language model for any prompt length,
the tower once for one tile and once for more (one to two minutes in all on an H200).

Used by :mod:`workbench.chat` for sessions on a single CUDA device without adapters; everything
else (CPU, models split across GPUs, adapters) goes through ``generate``. If the step cannot be
captured (some rope variants look at tensor values on the host), it runs eagerly instead, still
with the static cache, and ``mode`` says so.
"""

from __future__ import annotations

import inspect
import threading
from typing import Callable

import torch

CAPACITY_STEP = 1024  # the cache grows in these steps; each growth captures the step again
# A compiled step is compiled for its cache's length (about a minute on an H200), so a compiled
# decoder grows its cache in larger steps: a conversation recompiles once per 4096 tokens.
COMPILED_CAPACITY_STEP = 4096
DECODE_ATTENTION = "workbench_decode"


def register() -> None:
    """Make ``workbench_decode`` known to transformers (idempotent); its masks are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)


def decode_attention(module, query, key, value, attention_mask, *, dropout: float = 0.0, scaling=None, **kwargs):
    """One query token at batch 1: softmax(q k^T) v per key/value head, its query heads stacked
    as rows, so no key or value is copied. Anything else is transformers' SDPA attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    if b != 1 or q_len != 1 or module.training or heads % key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q = query.view(1, key.shape[1], groups, dim)  # heads are grouped in order: head h uses key head h // groups
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:  # (1, 1, 1, L): True where allowed, or an additive float mask
        mask = attention_mask.reshape(1, 1, 1, -1)[..., : key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)  # (1, kv heads, groups, dim)
    return out.reshape(1, 1, heads, dim), None


class GraphDecoder:
    """One per session; keeps its cache and graph between turns (both are reset, not rebuilt)."""

    def __init__(self, model, *, compile: bool = False):
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.capacity = 0
        self.cache = None
        self.graph = None
        # "eager" on a CPU (tests run the same loop there) or after a failed capture
        self.mode = "graph" if self.device.type == "cuda" else "eager"
        self._ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self._logits = None
        # transformers 5.24 renamed the forward's past_key_values to cache; older 5.x knows only the first
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        text = model.config.get_text_config()
        if text._attn_implementation == "sdpa":  # another choice (eager, flash) made at load is kept
            register()
            text._attn_implementation = DECODE_ATTENTION
        self.compiled = compile and self.mode == "graph"
        self._run = torch.compile(self._step, dynamic=None) if self.compiled else self._step
        inner = getattr(model, "model", None)
        self._prefill_modules = [getattr(inner, n) for n in ("language_model", "vision_tower") if hasattr(inner, n)]
        self.prefill_compiled = False
        self.compile_prefill(self.compiled)

    def compile_prefill(self, on: bool) -> None:
        """Compile (or stop compiling) the language model and the vision tower, in place, for
        dynamic shapes. In place because the prefill is the model's own forward; the compiled
        decode step inlines them (torch.compile inside torch.compile is traced as one). Turned off
        where ``generate`` takes over the model (an adapter attached): its layers change there,
        and would only compile again for nothing."""
        if on == self.prefill_compiled:
            return
        for module in self._prefill_modules:
            if on:
                module.compile(dynamic=True)
            else:  # torch has no public undo of Module.compile; this is the attribute it sets
                module._compiled_call_impl = None
        self.prefill_compiled = on

    def _reserve(self, tokens: int) -> None:
        from transformers import StaticCache

        if tokens <= self.capacity:
            self.cache.reset()
            return
        step = COMPILED_CAPACITY_STEP if self.compiled else CAPACITY_STEP
        self.capacity = -(-tokens // step) * step
        self.cache = self.graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.capacity)

    def _step(self):
        return self.model(input_ids=self._ids, cache_position=self._pos, position_ids=self._pos.view(1, 1),
                          use_cache=True, **{self._cache_arg: self.cache}).logits[:, -1]

    def _advance(self):
        """The step for the token in ``_ids`` at ``_pos``: its logits, with the greedy next token
        left in ``_ids`` and ``_pos`` moved on, all on the device, so the next step can be queued
        before the host has read this one's token."""
        logits = self._run()
        self._ids.copy_(logits.argmax(dim=-1, keepdim=True))
        self._pos.add_(1)
        return logits

    def _next_logits(self):
        if self.mode == "eager":
            return self._advance()
        if self.graph is None:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up (and compile) off the capture
                self._warm_up(2 if self.compiled else 1)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._logits = self._advance()
            except Exception:  # e.g. a host read of a tensor inside the model: run it eagerly
                self.mode = "eager"
                self.compiled = False
                self._run = self._step
                torch.cuda.synchronize(self.device)
                return self._advance()
            self.graph = graph
        self.graph.replay()
        return self._logits

    def _warm_up(self, times: int) -> None:
        """Run the step and undo everything it changed: the token, the position, the cache's own
        write position (``_rewind``)."""
        ids, pos = self._ids.clone(), self._pos.clone()
        for _ in range(times):
            self._advance()
            self._rewind()
            self._ids.copy_(ids)
            self._pos.copy_(pos)

    def _rewind(self) -> None:
        """Undo one step's advance of the cache's write position. transformers' static layers
        write where their own counter (a device tensor) says, not at the position passed in, and
        every forward moves it on, so a warm-up step would put the next token one slot too far."""
        for layer in self.cache.layers:
            length = getattr(layer, "cumulative_length", None)
            if torch.is_tensor(length):
                length.sub_(1)

    @torch.inference_mode()
    def generate(self, inputs: dict, *, max_new_tokens: int, stop_ids: list[int], stop_event: threading.Event,
                 on_token: Callable[[torch.Tensor], None], do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0) -> torch.Tensor:
        """Prompt ids followed by the answer's; ``on_token`` gets each new token as a (1, 1) CPU tensor."""
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        processors = LogitsProcessorList()
        if repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
        if do_sample:
            processors.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))

        ids = inputs["input_ids"]
        n = ids.shape[1]
        self._reserve(n + max_new_tokens)
        prompt = {k: v for k, v in inputs.items() if k != "attention_mask"}  # batch 1: no padding
        pos = torch.arange(n, device=self.device)
        logits = self.model(**prompt, cache_position=pos, position_ids=pos[None], use_cache=True, logits_to_keep=1,
                            **{self._cache_arg: self.cache}).logits[:, -1]
        tokens: list[int] = []
        stops = set(stop_ids)

        def emit(token: int) -> bool:
            """Hand the token on; True when the answer ends with it."""
            tokens.append(token)
            on_token(torch.tensor([[token]]))
            return token in stops or stop_event.is_set() or len(tokens) == max_new_tokens

        if processors or do_sample:
            self._sampled(logits, ids, processors, do_sample, emit, n)
        else:
            self._greedy(logits, emit, n, max_new_tokens)
        return torch.cat([ids[0], torch.tensor(tokens, dtype=ids.dtype, device=ids.device)])[None]

    def _greedy(self, logits, emit, n: int, max_new_tokens: int) -> None:
        """Each step is queued before the host waits for the one before it, so the GPU never
        idles on the host's per-token work (streaming, stop checks). An answer that ends thus
        leaves one step computed and unused; its cache slot is past the answer and reset with it."""
        cuda = self.device.type == "cuda"
        self._ids.copy_(logits.argmax(dim=-1, keepdim=True))
        self._pos.fill_(n)
        slots = torch.zeros(2, dtype=torch.long, pin_memory=cuda)  # tokens on their way to the host
        done = [torch.cuda.Event(), torch.cuda.Event()] if cuda else []

        def launch(k: int) -> None:  # the step that makes token k (k = 0 is the prefill's)
            if k:
                self._next_logits()
            slots[k % 2].copy_(self._ids[0, 0], non_blocking=cuda)
            if cuda:
                done[k % 2].record()

        launch(0)
        for k in range(max_new_tokens):
            if k + 1 < max_new_tokens:
                launch(k + 1)
            if cuda:
                # Wait with the GIL released: the thread streaming the text runs meanwhile. Holding
                # the GIL through the wait would let the streaming thread in only at Python's 5 ms
                # switch interval, once per token (measured).
                done[k % 2].synchronize()
            if emit(int(slots[k % 2])):
                return

    def _sampled(self, logits, history, processors, do_sample: bool, emit, n: int) -> None:
        """Sampling or a repetition penalty: the host picks each token from the step's logits."""
        self._pos.fill_(n)
        while True:
            if processors:
                logits = processors(history, logits.float())
            if do_sample:
                token = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)
            else:
                token = logits.argmax(dim=-1, keepdim=True)
            if processors:  # only the repetition penalty reads what came before
                history = torch.cat([history, token], dim=1)
            self._ids.copy_(token)  # replaces the greedy choice a step leaves there
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # with the GIL released (see _greedy)
            if emit(int(token)):
                return
            logits = self._next_logits()


def for_session(session) -> GraphDecoder | None:
    """The session's decoder, or None where ``generate`` must be used (not one CUDA device, an
    adapter, or a model split across GPUs). A per-GPU budget that fits on one GPU keeps it: the
    planner's reserve covers the cache, which holds prompt + answer rounded up to CAPACITY_STEP
    (COMPILED_CAPACITY_STEP when compiled)."""
    single = session.input_device.type == "cuda" and not (
        session.device_map and len({str(v) for v in session.device_map.values()}) > 1)
    if not single or session.adapter:
        if session.decoder is not None:  # generate answers now; an adapter may come off again
            session.decoder.compile_prefill(False)
        return None
    if session.decoder is None:
        session.decoder = GraphDecoder(session.model, compile=session.compile)
    session.decoder.compile_prefill(session.decoder.compiled)
    return session.decoder
