"""Where each part of a model goes when it does not fit on one GPU.

Users write a budget per GPU (``["15GB"] * 4`` or ``{0: "15GiB", 1: "15GiB"}``). accelerate's
default plan fills GPU 0 to its limit, then GPU 1, and so on, counting weights only: the last GPU
gets the leftovers, the first has no room left for activations, and the first long prompt runs out
of memory (the complaint users bring from other tools). This planner instead:

1. keeps the vision tower, projector, token embeddings and rotary tables together on the first GPU
   (images are encoded and merged into the embeddings there, with no cross-device hop);
2. keeps the language model's layers in order and contiguous, the final norm and LM head after them;
3. charges every GPU a reserve on top of its weights: KV cache for its layers at the planned context
   length, one layer's prefill activations, a fraction for the allocator, and on the first GPU the
   vision tower's activations for the planned number of tiles;
4. chooses the split that minimises the fullest GPU's share of its budget (bisection over that
   share, greedy contiguous fill at each step — optimal for contiguous splits);
5. refuses, with the numbers, when the model cannot fit: never a silent CPU offload.

It works on meta-device models, so a 76B plan is computed on a laptop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PlacementError, UserInputError

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: str | int | float) -> int:
    """``"15GB"`` → 15·10⁹ bytes, ``"15GiB"`` → 15·2³⁰ (accelerate's convention); ints are bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise UserInputError(f"Memory size must be positive, got {value}.")
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)\s*", str(value), re.I)
    if not m:
        raise UserInputError(f"Cannot read memory size {value!r}: write it like '15GB' or '15GiB'.")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise UserInputError(f"Memory size must be positive, got {value!r}: write it like '15GB'.")
    return size


def parse_budgets(max_memory) -> dict[int, int]:
    """Per-GPU budgets as users write them → ``{gpu_index: bytes}``. A list gives GPUs 0..n-1."""
    if isinstance(max_memory, str):
        max_memory = max_memory.split()
    if isinstance(max_memory, dict):
        out = {}
        for key, value in max_memory.items():
            k = str(key).lower().removeprefix("cuda:")
            if k == "cpu":
                raise PlacementError("A 'cpu' budget asks for CPU offload, which the workbench does not do silently. "
                                     "Give GPU budgets only, or pass an explicit device_map that names 'cpu'.")
            if not k.isdigit():
                raise UserInputError(f"max_memory key {key!r} is not a GPU index: use 0, 1, … or 'cuda:0'.")
            out[int(k)] = parse_size(value)
        return dict(sorted(out.items()))
    if isinstance(max_memory, (list, tuple)):
        if not max_memory:
            raise UserInputError("max_memory is empty: give one budget per GPU, e.g. ['15GB', '15GB'].")
        return {i: parse_size(v) for i, v in enumerate(max_memory)}
    raise UserInputError("max_memory must be a list like ['15GB', '15GB'] or a dict like {0: '15GiB'}.")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Headroom:
    """What each GPU keeps free beyond its weights (see the module docstring)."""

    context_tokens: int = 4096  # prompt + answer held in the KV cache: a 12-tile image + ~700 text tokens
    batch: int = 1
    vision_tiles: int = 13  # 12 tiles + thumbnail, the most any family uses
    allocator_fraction: float = 0.03


@dataclass
class Unit:
    """A piece that moves as one: a decoder layer, or the vision+embedding group, or the head."""

    names: list[str]
    weight_bytes: int
    kv_bytes: int = 0

    @property
    def cost(self) -> int:
        return self.weight_bytes + self.kv_bytes


@dataclass
class Plan:
    device_map: dict[str, int]
    budgets: dict[int, int]
    weights: dict[int, int]  # bytes of weights per GPU
    reserve: dict[int, int]  # bytes held back per GPU (KV cache, activations, allocator)
    notes: list[str] = field(default_factory=list)

    def used(self, gpu: int) -> int:
        return self.weights.get(gpu, 0) + self.reserve.get(gpu, 0)

    def fill(self) -> dict[int, float]:
        return {g: self.used(g) / b for g, b in self.budgets.items()}

    def summary(self) -> str:
        rows = [f"GPU {g}: weights {gib(self.weights.get(g, 0))} + reserve {gib(self.reserve.get(g, 0))} "
                f"= {gib(self.used(g))} of {gib(b)} ({100 * self.used(g) / b:.0f}%)"
                for g, b in self.budgets.items()]
        return "\n".join(rows + self.notes)


def _nbytes(module: torch.nn.Module, dtype: torch.dtype | None) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None and t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total


def _parts(model):
    """(first-GPU group names, decoder layer names, tail names) of an InternVL model."""
    inner = getattr(model, "model", model)
    lm = inner.language_model
    prefix = "model." if hasattr(model, "model") else ""
    head = [f"{prefix}vision_tower", f"{prefix}multi_modal_projector", f"{prefix}language_model.embed_tokens"]
    if getattr(lm, "rotary_emb", None) is not None:
        head.append(f"{prefix}language_model.rotary_emb")
    layers = [f"{prefix}language_model.layers.{i}" for i in range(len(lm.layers))]
    tail = [f"{prefix}language_model.norm"] + (["lm_head"] if hasattr(model, "lm_head") else [])
    return head, layers, tail


def units_of(model, dtype: torch.dtype | None, headroom: Headroom) -> tuple[list[Unit], int, int]:
    """Units in placement order, plus the first GPU's vision reserve and every GPU's activation reserve."""
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    element = torch.empty((), dtype=dtype or next(model.parameters()).dtype).element_size()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_per_layer = 2 * text.num_key_value_heads * head_dim * headroom.context_tokens * headroom.batch * element
    head_names, layer_names, tail_names = _parts(model)
    get = model.get_submodule
    units = [Unit(head_names, sum(_nbytes(get(n), dtype) for n in head_names))]
    units += [Unit([n], _nbytes(get(n), dtype), kv_per_layer) for n in layer_names]
    units.append(Unit(tail_names, sum(_nbytes(get(n), dtype) for n in tail_names)))
    patches = (vision.image_size[0] // vision.patch_size[0]) ** 2 + 1
    vision_act = headroom.vision_tiles * patches * (4 * vision.hidden_size + vision.intermediate_size) * element
    llm_act = headroom.context_tokens * headroom.batch * (4 * text.hidden_size + text.intermediate_size) * element
    return units, vision_act, llm_act


def plan(model, max_memory, *, dtype: torch.dtype | None = None, headroom: Headroom = Headroom()) -> Plan:
    """The balanced, budget-respecting plan for ``model`` (a meta-device build is enough)."""
    budgets = parse_budgets(max_memory)
    gpus = list(budgets)
    units, vision_act, llm_act = units_of(model, dtype, headroom)

    def fixed_reserve(g: int) -> int:
        base = int(budgets[g] * headroom.allocator_fraction) + llm_act
        return base + (vision_act if g == gpus[0] else 0)

    def assign(share: float) -> list[int] | None:
        """Greedy contiguous fill with each GPU capped at ``share`` of its budget (None: no fit).
        Unit 0, the vision+embedding group, must fit on the first GPU."""
        gi, used = 0, fixed_reserve(gpus[0]) + units[0].cost
        if used > share * budgets[gpus[0]]:
            return None
        where = [0]
        for unit in units[1:]:
            while used + unit.cost > share * budgets[gpus[gi]]:
                gi += 1
                if gi == len(gpus):
                    return None
                used = fixed_reserve(gpus[gi])
            where.append(gi)
            used += unit.cost
        return where

    if assign(1.0) is None:
        need = sum(u.cost for u in units) + sum(fixed_reserve(g) for g in gpus)
        first = units[0].cost + fixed_reserve(gpus[0])
        raise PlacementError(
            f"The model does not fit in the given budgets: it needs about {gib(need)} "
            f"(weights {gib(sum(u.weight_bytes for u in units))}, KV cache for {headroom.context_tokens} tokens, "
            f"activations and allocator reserve) and the budgets total {gib(sum(budgets.values()))} "
            f"over {len(gpus)} GPU(s); the first GPU alone must hold {gib(first)} for the vision tower, "
            "projector and embeddings. Raise the budgets, add GPUs, load in 'int8'/'4bit', "
            "or lower Headroom.context_tokens."
        )
    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the fullest GPU's share of its budget
        mid = (lo + hi) / 2
        if assign(mid) is None:
            lo = mid
        else:
            hi = mid
    where = _even_split(units, gpus, budgets, fixed_reserve, cap=hi + 1e-9) or assign(hi)
    assert where is not None
    device_map, weights, reserve = {}, {g: 0 for g in gpus}, {g: 0 for g in gpus}
    for unit, gi in zip(units, where):
        g = gpus[gi]
        for name in unit.names:
            device_map[name] = g
        weights[g] += unit.weight_bytes
        reserve[g] += unit.kv_bytes
    for g in gpus:
        if weights[g]:
            reserve[g] += fixed_reserve(g)
    notes = [f"reserve: KV cache for {headroom.context_tokens} tokens × batch {headroom.batch}, "
             f"{headroom.vision_tiles} tiles of vision activations on GPU {gpus[0]}, "
             f"{headroom.allocator_fraction:.0%} of each budget for the allocator"]
    return Plan(device_map, budgets, weights, reserve, notes)


def _even_split(units, gpus, budgets, fixed_reserve, cap: float) -> list[int] | None:
    """Contiguous split with every GPU at most ``cap`` of its budget that minimises the sum of
    squared shares (so the load is even, not front-loaded). Dynamic programming over
    (GPU, units placed so far); the first unit is pinned to the first GPU."""
    n, inf = len(units), float("inf")
    prefix = [0]
    for u in units:
        prefix.append(prefix[-1] + u.cost)

    def share(g: int, j: int, i: int) -> float:  # units[j:i] on GPU g
        if i == j:
            return 0.0
        return (prefix[i] - prefix[j] + fixed_reserve(gpus[g])) / budgets[gpus[g]]

    best = [[inf] * (n + 1) for _ in gpus]
    back = [[0] * (n + 1) for _ in gpus]
    for i in range(1, n + 1):
        s = share(0, 0, i)
        if s <= cap:
            best[0][i], back[0][i] = s * s, 0
    for g in range(1, len(gpus)):
        for i in range(1, n + 1):
            for j in range(1, i + 1):  # units[j:i] on GPU g; j ≥ 1 keeps unit 0 on GPU 0
                s = share(g, j, i)
                if s <= cap and best[g - 1][j] + s * s < best[g][i]:
                    best[g][i], back[g][i] = best[g - 1][j] + s * s, j
    if best[-1][n] == inf:
        return None
    where, i = [0] * n, n
    for g in range(len(gpus) - 1, -1, -1):
        j = back[g][i] if g else 0
        for k in range(j, i):
            where[k] = g
        i = j
    return where


def accelerate_plan(model, max_memory, *, dtype: torch.dtype | None = None) -> dict[str, int | str]:
    """accelerate's default greedy plan for the same budgets (for comparison)."""
    from accelerate import infer_auto_device_map

    import logging

    budgets = parse_budgets(max_memory)
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns that planned GPUs are absent when planning on a CPU machine
    try:
        return infer_auto_device_map(model, max_memory=dict(budgets), dtype=dtype,
                                     no_split_module_classes=list(model._no_split_modules or []))
    finally:
        log.setLevel(level)


def weights_per_device(model, device_map: dict[str, int | str], dtype: torch.dtype | None = None) -> dict:
    """Bytes of weights each device of a device map receives."""
    totals: dict = {}
    for name, device in device_map.items():
        module = model if name == "" else model.get_submodule(name)
        totals[device] = totals.get(device, 0) + _nbytes(module, dtype)
    return totals


# ---------------------------------------------------------------------------------------------
# Explicit device maps


def read_device_map(device_map) -> dict[str, int | str] | str:
    """A device map given as a dict, a JSON string, a JSON file path, or ``"auto"``."""
    if isinstance(device_map, dict):
        return {str(k): _device(v) for k, v in device_map.items()}
    text = str(device_map).strip()
    if text in ("auto", "balanced", "cpu") or re.fullmatch(r"cuda(:\d+)?|\d+", text):
        return text
    if text.startswith("{"):
        source = text
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserInputError(f"Device map {text!r} is neither 'auto', a JSON object, nor an existing JSON file.")
        source = path.read_text()
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"Device map {text[:80]!r} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise UserInputError("A device map must be a JSON object of module name → device.")
    return {str(k): _device(v) for k, v in data.items()}


def _device(value) -> int | str:
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text in ("cpu", "disk", "meta", "mps"):
        return text
    raise UserInputError(f"Unknown device {value!r} in the device map: use a GPU index, 'cuda:N', 'cpu' or 'disk'.")


def check_device_map(device_map: dict[str, int | str], gpu_count: int, model=None) -> None:
    """Refuse maps that name a missing GPU or leave part of the model unplaced."""
    missing = sorted({d for d in device_map.values() if isinstance(d, int) and d >= gpu_count})
    if missing:
        raise PlacementError(
            f"The device map names GPU(s) {missing}, but this machine has {gpu_count} visible GPU(s)"
            f"{' (0–' + str(gpu_count - 1) + ')' if gpu_count else ''}. Fix the map or CUDA_VISIBLE_DEVICES."
        )
    if model is not None and "" not in device_map:
        placed = tuple(device_map)
        unplaced = [n for n, _ in model.named_parameters()
                    if not any(n == p or n.startswith(p + ".") for p in placed)]
        if unplaced:
            raise PlacementError(f"The device map leaves {len(unplaced)} weight(s) unplaced, e.g. {unplaced[:3]}. "
                                 "Add their modules (or a parent module) to the map.")
