"""Fast training steps: several samples packed into one sequence, and a loss that never builds the
full logits.

Packing. A step's samples are laid end to end in one row (no padding), with position ids that
restart at each sample, so rope sees every sample as if it were alone. Attention must not cross
samples: the language model runs with the ``workbench_packed`` attention, registered in
transformers' ``AttentionInterface``, which calls transformers' own SDPA attention once per sample
(each call a plain causal one, so PyTorch picks its flash kernel). PyTorch has no stable varlen
attention and flash-attn is not installed everywhere; a per-sample loop is exact, costs no
attention work across samples (a block-diagonal mask would make it quadratic in the packed
length) and runs the same on a CPU, where the tests check it against unpacked steps. Without
sample bounds (generation, evaluation with padding) it is plain SDPA with the model's mask.

The loss. The language model's head is applied only where a label follows (the answers), through
transformers' ``logits_to_keep``: an InternVL prompt is mostly image tokens, so this skips most of
the head's work and the float32 logits of every image position.

The frozen vision tower. transformers' ``enable_input_require_grads`` (called for gradient
checkpointing, by peft and by the model's own ``activation_checkpointing_enable``) hooks every
sub-model's input embeddings, the vision tower's patch embeddings too. A frozen tower then builds
an autograd graph, is recomputed by checkpointing and back-propagated through, all for gradients
nothing uses: on the InternVL2-2B shape that is about a third of a LoRA step's GPU time
(bench/step_probe.py). ``frozen_vision_without_autograd`` runs such a tower under ``no_grad``; a
trained projector after it still gets its gradients.
"""

from __future__ import annotations

import torch

PACKED_ATTENTION = "workbench_packed"


def register() -> None:
    """Make ``workbench_packed`` known to transformers (idempotent). Its masks are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)


def use_packed_attention(model) -> None:
    """Switch the language model (not the vision tower, whose attention is not causal) to the
    packed attention. Only this process's model is changed; saved configs do not record it."""
    register()
    model.config.get_text_config()._attn_implementation = PACKED_ATTENTION


def packed_attention(module, query, key, value, attention_mask, *, dropout: float = 0.0, scaling=None,
                     packed_bounds: tuple[int, ...] | None = None, **kwargs):
    """SDPA per packed sample. ``packed_bounds`` are the samples' start offsets plus the total
    length, as plain ints (a tensor would cost a device sync in every layer). Inside a compiled
    layer (compile_layers) the loop is traced, its bounds symbolic: the layer stays one graph, and
    only a pack with another number of samples compiles again."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_bounds is None or len(packed_bounds) <= 2 or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    outputs = []
    for start, end in zip(packed_bounds[:-1], packed_bounds[1:]):
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], None, dropout=dropout, scaling=scaling,
                                        is_causal=True, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def _unwrapped(model):
    """The InternVL model itself, inside peft's wrapper or not."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_vision_without_autograd(model, enabled: bool = True) -> bool:
    """Run the vision tower under ``torch.no_grad`` when none of its parameters trains (LoRA or
    full); ``enabled=False`` undoes it. Returns whether the tower runs without autograd now."""
    tower = _unwrapped(model).model.vision_tower
    tower.__dict__.pop("forward", None)  # back to the class's forward
    if not enabled or any(p.requires_grad for p in tower.parameters()):
        return False
    tower.forward = torch.no_grad()(tower.forward)  # an instance attribute: nn.Module.__call__ finds it first
    return True


def checkpoint_layers(model, share: float = 1.0) -> int:
    """Gradient checkpointing (non-reentrant) on ``share`` of the language model's layers, spread
    evenly; the others keep their activations. Checkpointing every layer costs a second forward
    pass in backward: on the InternVL2-8B shape, compute-bound already at 2 packed samples, that
    recompute is what stands between 9.6k and 13.6k tokens/s (bench/perf.py, 2 packed), while
    dropping it takes 41.8 instead of 17.6 GiB. A share in between trades the two. Written here rather than with
    transformers' ``every_n_layers``: that exists only in newer releases (not 5.17) and cannot say
    3 of 4. The vision tower's layers keep what transformers set (a frozen tower runs without
    autograd anyway, see frozen_vision_without_autograd). Returns how many layers checkpoint."""
    base = _unwrapped(model)
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers ≥ 5.2x; gradient_checkpointing_enable is its deprecated alias
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = base.model.language_model.layers
    count = max(1, round(share * len(layers)))  # a share > 0 checkpoints at least one layer
    chosen = {i * len(layers) // count for i in range(count)}
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i in chosen
    return len(chosen)


def compile_layers(model) -> int:
    """``torch.compile`` each language-model layer (the vision tower stays eager; frozen, it runs
    without autograd, see frozen_vision_without_autograd). What this buys is fewer, fused kernels
    and far less host work per step: a LoRA step of a small model is otherwise bound by kernel
    launches (bench/perf.py). Shapes are dynamic, so packs of other lengths reuse the compiled
    code; a pack of another number of samples (an epoch's last, shorter batch) compiles once more,
    since the attention's loop over samples is unrolled in the graph. Returns the count."""
    layers = _unwrapped(model).model.language_model.layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


class PackingCollator:
    """One row holding every sample of the batch end to end: ids, labels (-100 at each sample's
    first token, which nothing before it may predict), the answer positions for ``loss``,
    restarting position ids, the bounds for ``packed_attention``, and all tiles in order. Counts
    tokens for the throughput log."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id  # unused when packing (no padding); kept so both collators build alike
        self.tokens = 0

    def __call__(self, batch):
        ids, labels, positions, bounds = [], [], [], [0]
        for b in batch:
            n = len(b.input_ids)
            ids += b.input_ids
            labels += [-100] + list(b.labels[1:])
            positions += range(n)
            bounds.append(bounds[-1] + n)
        self.tokens += len(ids)
        labels = torch.tensor([labels])
        out = {"input_ids": torch.tensor([ids]), "labels": labels, "answer_positions": answer_positions(labels),
               "position_ids": torch.tensor([positions]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
               "packed_bounds": tuple(bounds)}
        tiles = [b.pixel_values for b in batch if b.pixel_values is not None]
        if tiles:
            out["pixel_values"] = torch.cat(tiles)
        return out


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """The sequence positions whose next token is a label: the only ones the head must score.
    Shared by every row (a union), so it works for padded batches too. The collators compute them
    from the labels while those are still on the host: ``nonzero`` of a GPU tensor waits for the
    GPU, a stall in every step."""
    following = labels[:, 1:] != -100
    return following.any(dim=0).nonzero().flatten()


def loss(model, inputs: dict, *, return_outputs: bool = False):
    """Mean cross-entropy over the label tokens, with the head applied at label positions only.
    The same value as transformers' own loss over full logits (tested)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = inputs.pop("answer_positions", None)
    if keep is None:
        keep = answer_positions(labels)
    outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits  # (batch, len(keep), vocab)
    targets = labels[:, keep + 1]
    value = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    return (value, outputs) if return_outputs else value
