"""Fast batch-1 decoding on one GPU: a static KV cache and the decode step replayed as a CUDA graph.

Why not ``model.generate``: at batch 1 a small InternVL's decode step is about a millisecond of GPU
work, and generate's own per-token host work (input preparation, logits processors, stopping
criteria, cache bookkeeping, the compiled step's guards) takes several more; bench/perf.py
measures both in one process. This loop does only what a chat turn needs: one prefill (the head
applied to the last position only), then the same one-token step replayed from a captured graph,
with transformers' own logits processors for sampling and repetition penalty.

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


class GraphDecoder:
    """One per session; keeps its cache and graph between turns (both are reset, not rebuilt)."""

    def __init__(self, model):
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

    def _reserve(self, tokens: int) -> None:
        from transformers import StaticCache

        if tokens <= self.capacity:
            self.cache.reset()
            return
        self.capacity = -(-tokens // CAPACITY_STEP) * CAPACITY_STEP
        self.cache = self.graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.capacity)

    def _step(self):
        return self.model(input_ids=self._ids, cache_position=self._pos, position_ids=self._pos.view(1, 1),
                          use_cache=True, **{self._cache_arg: self.cache}).logits[:, -1]

    def _decode_logits(self):
        if self.mode == "eager":
            return self._step()
        if self.graph is None:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the capture; it writes this step's own cache slot
                self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._logits = self._step()
            except Exception:  # e.g. a host read of a tensor inside the model: run it eagerly
                self.mode = "eager"
                torch.cuda.synchronize(self.device)
                return self._step()
            self.graph = graph
        self.graph.replay()
        return self._logits

    @torch.inference_mode()
    def generate(self, inputs: dict, *, max_new_tokens: int, stop_ids: list[int], stop_event: threading.Event,
                 on_token: Callable[[torch.Tensor], None], do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0) -> torch.Tensor:
        """Prompt ids followed by the answer's; ``on_token`` gets each new token as a (1, 1) tensor."""
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
        out = [ids[0]]
        history = ids
        stops = set(stop_ids)
        for i in range(max_new_tokens):
            if processors:
                logits = processors(history, logits.float())
            if do_sample:
                token = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)
            else:
                token = logits.argmax(dim=-1, keepdim=True)
            out.append(token[0])
            if repetition_penalty != 1.0:
                history = torch.cat([history, token], dim=1)
            if self.device.type == "cuda":
                # Wait with the GIL released: the thread streaming the text runs meanwhile. Reading the
                # token straight away would hold the GIL through the wait, and the streaming thread
                # would get it only at Python's 5 ms switch interval, once per token (measured).
                torch.cuda.current_stream(self.device).synchronize()
            on_token(token)
            if int(token) in stops or stop_event.is_set() or i == max_new_tokens - 1:
                break
            self._ids.copy_(token)
            self._pos.fill_(n + i)
            logits = self._decode_logits()
        return torch.cat(out)[None]


def for_session(session) -> GraphDecoder | None:
    """The session's decoder, or None where ``generate`` must be used (not one CUDA device, an
    adapter, or a model split across GPUs). A per-GPU budget that fits on one GPU keeps it: the
    planner's reserve covers the cache, which holds prompt + answer rounded up to CAPACITY_STEP."""
    if session.input_device.type != "cuda" or session.adapter:
        return None
    if session.device_map and len({str(v) for v in session.device_map.values()}) > 1:
        return None
    if session.decoder is None:
        session.decoder = GraphDecoder(session.model)
    return session.decoder
