"""Original-format InternVL checkpoints (remote code, ``InternVLChatModel``) → the native
transformers InternVL format, without ``trust_remote_code``.

The original remote code does not run on current transformers, so the weights are renamed (and two
fused projections split) into ``InternVLForConditionalGeneration``'s layout; the mapping follows
../shared/reference/architectures.md:

- vision tower: prefix and module renames; the fused ``attn.qkv`` splits in thirds (q, k, v);
- projector ``mlp1.{0,1,3}`` → ``multi_modal_projector.{layer_norm,linear_1,linear_2}``;
- Qwen2 / Llama / Yi / Phi-3 language models: prefix only (native Phi-3 keeps its fused layout);
- InternLM2 becomes a native llama: renames, and ``wqkv`` split per KV-head group
  ``[q_0 … q_{g-1}, k, v]``.

Shards are read and written one at a time (a 76B checkpoint never sits in memory whole), into a
temporary folder beside the destination that is renamed only when everything was checked and
written: a half-written conversion is never where ``load()`` looks.

The int8 InternVL-Chat-V1.5 checkpoint (saved after an 8-bit bitsandbytes load: int8 ``weight``
plus a per-row ``SCB`` scale) is dequantized to float16 on the way, ``w = q · SCB / 127``, and
marked so that ``load()`` loads it in 8 bit (from float16) again. bitsandbytes' row-wise absmax
quantization of those values gives back exactly the stored int8 rows — the largest entry of each
row is again the scale, and float16 rounding moves ``q`` by at most |q|·2⁻¹⁰ < ½ (bf16's coarser
rounding would not: about 1 entry in 20 000 would come back off by one) — so nothing is lost in the
round trip, and the fused-projection splits need no int8 arithmetic.

A processor (tiles, the family's template, its system message) is built around the checkpoint's
tokenizer: as it is when it loads natively, InternLM2's remote-code SentencePiece tokenizer through
``internlm2_tokenizer``. The system message is the checkpoint's own (``system_message`` in its
config, else the one its modeling code sets), else the family's.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError
from .templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM

ORIGINAL_ARCHITECTURE = "InternVLChatModel"
LLM_TYPES = {  # original llm_config architecture → native text model type
    "InternLM2ForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
}
SHARD_BYTES = 2 * 1024**3


class ConversionError(UserInputError):
    """The source folder cannot be converted; the message names the file and the problem."""


def is_original(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    if not config.exists():
        return False
    try:
        return ORIGINAL_ARCHITECTURE in (json.loads(config.read_text()).get("architectures") or [])
    except json.JSONDecodeError:
        return False


# -- config -----------------------------------------------------------------------------------------

def llm_kind(original: dict) -> str:
    """The original language model's architecture name (InternLM2ForCausalLM, …)."""
    llm = original.get("llm_config") or {}
    arch = (llm.get("architectures") or [None])[0]
    if arch not in LLM_TYPES:
        raise ConversionError(
            f"Unknown language model {arch!r} in config.json (llm_config.architectures). Known: "
            f"{', '.join(LLM_TYPES)}.")
    return arch


def native_config(original: dict, image_token_id: int):
    """The ``InternVLConfig`` equivalent to an original ``config.json``."""
    from transformers import AutoConfig, InternVLConfig
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    if original.get("ps_version", "v2") != "v2":
        raise ConversionError(
            f"config.json has ps_version {original.get('ps_version')!r}: only the 'v2' pixel-shuffle order "
            "(every released InternVL 1.5–3 checkpoint) converts to the native model.")
    v = original["vision_config"]
    image_size = v.get("image_size", 448)
    patch_size = v.get("patch_size", 14)
    vision = InternVLVisionConfig(
        hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"],
        attention_bias=bool(v.get("qkv_bias", True)), use_qk_norm=bool(v.get("qk_normalization", False)),
        norm_type=v.get("norm_type", "layer_norm"), layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        image_size=image_size, patch_size=patch_size, hidden_act=v.get("hidden_act", "gelu"),
    )
    arch = llm_kind(original)
    t = dict(original["llm_config"])
    rope = {"rope_type": "default", "rope_theta": t.get("rope_theta", 10000.0)}
    scaling = t.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        rope = {**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": kind, "rope_theta": rope["rope_theta"]}
    common = dict(
        hidden_size=t["hidden_size"], num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
        intermediate_size=t["intermediate_size"], vocab_size=t["vocab_size"],
        max_position_embeddings=t.get("max_position_embeddings", 4096), rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=False, bos_token_id=t.get("bos_token_id"), eos_token_id=t.get("eos_token_id"),
        pad_token_id=t.get("pad_token_id"),
    )
    if LLM_TYPES[arch] == "phi3":
        common["original_max_position_embeddings"] = t.get("original_max_position_embeddings", 4096)
    if arch == "InternLM2ForCausalLM":
        common["attention_bias"] = bool(t.get("bias", False))
        common["mlp_bias"] = False
    text = AutoConfig.for_model(LLM_TYPES[arch], rope_parameters=rope, **common)
    select = original.get("select_layer", -1)
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        downsample_ratio=original.get("downsample_ratio", 0.5), vision_feature_layer=select,
        tie_word_embeddings=False, projector_hidden_act="gelu",
    )


# -- weights ----------------------------------------------------------------------------------------

_VISION_RENAMES = [
    (r"^vision_model\.", "model.vision_tower."),
    (r"\.encoder\.layers\.", ".encoder.layer."),
    (r"\.embeddings\.class_embedding$", ".embeddings.cls_token"),
    (r"\.embeddings\.position_embedding$", ".embeddings.position_embeddings"),
    (r"\.embeddings\.patch_embedding\.", ".embeddings.patch_embeddings.projection."),
    (r"\.ls1$", ".lambda_1"), (r"\.ls2$", ".lambda_2"),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.q_norm\.", ".attention.q_norm."), (r"\.attn\.k_norm\.", ".attention.k_norm."),
    (r"\.norm1\.", ".layernorm_before."), (r"\.norm2\.", ".layernorm_after."),
]
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_INTERNLM2_RENAMES = [
    (r"\.tok_embeddings\.", ".embed_tokens."), (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."), (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."), (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
]


def convert_tensor(key: str, tensor, original: dict) -> dict:
    """One original tensor → its native name(s) and tensor(s)."""
    if key.startswith("vision_model."):
        name = key
        for pattern, repl in _VISION_RENAMES:
            name = re.sub(pattern, repl, name)
        if ".attn.qkv." in name:  # fused q, k, v stacked along the output dim
            base, kind = name.split(".attn.qkv.")
            q, k, v = tensor.chunk(3, dim=0)
            return {f"{base}.attention.q_proj.{kind}": q, f"{base}.attention.k_proj.{kind}": k,
                    f"{base}.attention.v_proj.{kind}": v}
        return {name: tensor}
    if key.startswith("mlp1."):
        index, kind = key.split(".")[1:]
        if index not in _PROJECTOR:
            raise ConversionError(f"unexpected projector tensor {key} (mlp1 has modules 0, 1 and 3).")
        return {f"model.multi_modal_projector.{_PROJECTOR[index]}.{kind}": tensor}
    if not key.startswith("language_model."):
        raise ConversionError(f"tensor {key} is outside vision_model / mlp1 / language_model.")
    arch = llm_kind(original)
    if arch != "InternLM2ForCausalLM":
        if key.startswith("language_model.lm_head."):
            return {key.replace("language_model.lm_head.", "lm_head."): tensor}
        return {key.replace("language_model.model.", "model.language_model."): tensor}
    if key == "language_model.output.weight":
        return {"lm_head.weight": tensor}
    name = key.replace("language_model.model.", "model.language_model.")
    for pattern, repl in _INTERNLM2_RENAMES:
        name = re.sub(pattern, repl, name)
    if ".attention.wqkv." in name:
        return _split_wqkv(name, tensor, original["llm_config"])
    return {name: tensor}


def _split_wqkv(name: str, tensor, llm: dict) -> dict:
    """InternLM2's fused rows, grouped per KV head as [q_0 … q_{g-1}, k, v] (head_dim rows each)."""
    heads, kv = llm["num_attention_heads"], llm.get("num_key_value_heads", llm["num_attention_heads"])
    hidden = llm["hidden_size"]
    head_dim, groups = hidden // heads, heads // kv
    if tensor.shape[0] != (heads + 2 * kv) * head_dim:
        raise ConversionError(f"{name}: {tuple(tensor.shape)} does not fit {heads} heads and {kv} KV heads of "
                              f"{head_dim} (config.json llm_config).")
    base, kind = name.split(".attention.wqkv.")
    rest = tensor.shape[1:]
    blocks = tensor.reshape(kv, groups + 2, head_dim, *rest)
    q = blocks[:, :groups].reshape(heads * head_dim, *rest)
    k = blocks[:, groups].reshape(kv * head_dim, *rest)
    v = blocks[:, groups + 1].reshape(kv * head_dim, *rest)
    return {f"{base}.self_attn.q_proj.{kind}": q.contiguous(), f"{base}.self_attn.k_proj.{kind}": k.contiguous(),
            f"{base}.self_attn.v_proj.{kind}": v.contiguous()}


# -- folders ----------------------------------------------------------------------------------------

@dataclass
class Summary:
    source: str
    llm: str
    tensors_in: int
    tensors_out: int
    bytes: int
    split: int  # fused tensors split (vision qkv, InternLM2 wqkv)
    processor: str = ""
    dequantized: int = 0  # int8 weights written back in 16 bit (the int8 V1.5)

    def __str__(self) -> str:
        int8 = (f"; {self.dequantized} int8 weights dequantized (load() loads them in 8 bit again)"
                if self.dequantized else "")
        return (f"converted {self.source}: {self.llm} language model, {self.tensors_in} tensors → "
                f"{self.tensors_out} ({self.split} fused projections split), {self.bytes / 1e9:.2f} GB{int8}; "
                f"processor {self.processor}")


def quantization(folder: str | Path) -> str | None:
    """"int8" for a converted int8 checkpoint (load it in 8 bit), else None."""
    marker = Path(folder) / "workbench_converted.json"
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text()).get("quantization")
    except json.JSONDecodeError:
        return None


def shards(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files, all present (an index that names a missing one is an error)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise ConversionError(f"{index} names shards that are not there: {', '.join(missing)}. "
                                  "Download the whole checkpoint again.")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    if list(folder.glob("*.bin")):
        raise ConversionError(f"{folder} holds .bin weights: only safetensors checkpoints convert.")
    raise ConversionError(f"{folder} has no model.safetensors (or index): not a complete checkpoint.")


def int8_scales(files: list[Path]) -> dict:
    """The per-row ``SCB`` scales of an int8 checkpoint, by module name (empty for a 16-bit one).
    Read first, since a weight and its scale may sit in different shards."""
    from safetensors import safe_open

    scales = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith(".SCB"):
                    scales[key[: -len(".SCB")]] = f.get_tensor(key)
    return scales


def dequantize(key: str, tensor, scales: dict, path: Path):
    """An int8 ``weight`` with its row scales → the float16 weight bitsandbytes quantizes back to it."""
    import torch

    module = key.removesuffix(".weight")
    if module not in scales or not key.endswith(".weight"):
        raise ConversionError(f"{path.name}: {key} is int8 but the checkpoint has no {module}.SCB scale for it; "
                              "the int8 checkpoint is incomplete (download it again).")
    scale = scales[module].float()
    if scale.shape != (tensor.shape[0],):
        raise ConversionError(f"{path.name}: {module}.SCB has shape {tuple(scale.shape)}, but {key} has "
                              f"{tensor.shape[0]} rows.")
    return (tensor.float() * scale[:, None] / 127).to(torch.float16)


def image_token_id(folder: Path, original: dict) -> int:
    """The id of <IMG_CONTEXT>, read from the checkpoint's tokenizer files."""
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        path = folder / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if name == "added_tokens.json" and "<IMG_CONTEXT>" in data:
            return int(data["<IMG_CONTEXT>"])
        entries = data.get("added_tokens") or list((data.get("added_tokens_decoder") or {}).items())
        for entry in entries:
            if isinstance(entry, dict) and entry.get("content") == "<IMG_CONTEXT>":
                return int(entry["id"])
            if isinstance(entry, tuple) and entry[1].get("content") == "<IMG_CONTEXT>":
                return int(entry[0])
    if "img_context_token_id" in original:
        return int(original["img_context_token_id"])
    raise ConversionError(f"{folder}: no <IMG_CONTEXT> token in tokenizer.json / tokenizer_config.json / "
                          "added_tokens.json; the checkpoint's tokenizer files are missing.")


def convert(src: str | Path, dst: str | Path, *, progress: bool = True) -> Summary:
    """Convert an original-format folder into ``dst`` (which must not exist yet)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not is_original(src):
        raise ConversionError(f"{src} is not an original-format InternVL checkpoint (config.json with "
                              f"architectures [{ORIGINAL_ARCHITECTURE!r}]); a native one loads as it is.")
    if dst.exists():
        raise ConversionError(f"{dst} exists already: choose a new folder (nothing was changed).")
    original = json.loads((src / "config.json").read_text())
    config = native_config(original, image_token_id(src, original))
    files = shards(src)
    scales = int8_scales(files)
    need = sum(f.stat().st_size for f in files) * (2 if scales else 1)  # int8 is written back in 16 bit
    dst.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dst.parent).free
    if free < need * 1.05:
        raise ConversionError(f"Not enough disk for {dst}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free "
                              f"on {dst.parent}. Free some space or convert to another disk.")
    expected = _expected_shapes(config)

    tmp = dst.with_name(f".{dst.name}.converting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        bar = _bar(len(files), progress)
        weight_map, seen, written, tensors_in, split = {}, set(), 0, 0, 0
        for n, path in enumerate(files, 1):
            out: dict = {}
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key.endswith((".SCB", ".weight_format")):
                        continue  # int8 bookkeeping, consumed with its weight
                    tensors_in += 1
                    tensor = f.get_tensor(key)
                    if tensor.dtype == torch.int8:
                        tensor = dequantize(key, tensor, scales, path)
                    elif scales:
                        tensor = tensor.to(torch.float16)  # one dtype for the whole int8 model
                    converted = convert_tensor(key, tensor, original)
                    split += len(converted) > 1
                    for name, tensor in converted.items():
                        if name not in expected:
                            raise ConversionError(f"{path.name}: {key} maps to {name}, which the native model "
                                                  "does not have: the checkpoint does not match its config.json.")
                        if tuple(tensor.shape) != expected[name]:
                            raise ConversionError(f"{path.name}: {key} has shape {tuple(tensor.shape)}, but config.json "
                                                  f"implies {expected[name]} for {name}.")
                        out[name] = tensor.contiguous()
            shard = f"model-{n:05d}-of-{len(files):05d}.safetensors"
            try:
                save_file(out, str(tmp / shard), metadata={"format": "pt"})
            except OSError as exc:  # the disk filled up after all (another writer, a quota)
                raise ConversionError(f"Could not write {shard} into {tmp.parent}: {exc.strerror or exc}. "
                                      "Free some space and convert again; nothing was kept.") from exc
            written += sum(t.numel() * t.element_size() for t in out.values())
            weight_map.update({k: shard for k in out})
            seen.update(out)
            bar(n)
        missing = sorted(set(expected) - seen)
        if missing:
            raise ConversionError(f"{src}: the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. "
                                  f"{', '.join(missing[:3])}. A shard may be incomplete.")
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": written}, "weight_map": weight_map}, indent=1))
        config.torch_dtype = "float16" if scales else str(original.get("torch_dtype", "bfloat16"))
        config.save_pretrained(tmp)
        for extra in src.iterdir():  # tokenizer, template, generation settings: as they are, for now
            if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in (
                    "config.json", "model.safetensors.index.json") and not extra.name.endswith(".py"):
                shutil.copy2(extra, tmp / extra.name)
        processor_note = _processor(tmp, src, original)
        lineage = {"converted_from": str(src.resolve()), "llm": llm_kind(original),
                   "template": original.get("template"), "processor": processor_note,
                   "quantization": "int8" if scales else None}
        (tmp / "workbench_converted.json").write_text(json.dumps(lineage, indent=1))
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave half a model where load() could find it
        raise
    return Summary(str(src), llm_kind(original), tensors_in, len(seen), written, split, processor_note,
                   len({k for k in scales}))


def _processor(folder: Path, src: Path, original: dict) -> str:
    """An InternVLProcessor (448-px tiles, the checkpoint's tile limit, its template and system
    message) around the checkpoint's own tokenizer, when that tokenizer loads without remote code."""
    from transformers import AutoTokenizer

    from . import internlm2_tokenizer
    from .templates import STYLES
    from .tiny import PROCESSOR_TOKENS, build_processor

    note = ""
    if internlm2_tokenizer.needs_conversion(folder):
        internlm2_tokenizer.convert(folder).save_pretrained(folder)  # replaces the remote-code tokenizer_config
        note = ", InternLM2 tokenizer converted"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, extra_special_tokens=dict(PROCESSOR_TOKENS))
    except Exception as exc:  # a tokenizer that needs remote code we do not convert
        return f"not built: the tokenizer does not load natively ({type(exc).__name__}: {str(exc)[:200]})"
    template = original.get("template") if original.get("template") in STYLES else "internvl2_5"
    system = original.get("system_message") or _system_message(src, template) or (
        INTERNVL2_5_SYSTEM if template == "internvl2_5" else INTERNVL2_SYSTEM)
    processor = build_processor(tokenizer, max_tiles=int(original.get("max_dynamic_patch", 6)), template=template,
                                system=system)
    processor.save_pretrained(folder)
    return f"built: template {template}, up to {original.get('max_dynamic_patch', 6)} tiles{note}"


def _system_message(src: Path, template: str) -> str | None:
    """The system message the checkpoint's own code sets (read as text, never run): a literal in
    modeling_internvl_chat.py, else the template's entry in conversation.py."""
    literal = r"system_message\s*=\s*(['\"])(.+?)\1"
    code = src / "modeling_internvl_chat.py"
    if code.exists():
        found = re.search(literal, code.read_text(errors="replace"))
        if found:
            return found.group(2)
    conv = src / "conversation.py"
    if conv.exists():
        text = conv.read_text(errors="replace")
        start = re.search(rf"name\s*=\s*['\"]{re.escape(template)}['\"]", text)
        if start:
            block = text[start.end():].split("register_conv_template", 1)[0]
            found = re.search(literal, block)
            if found:
                return found.group(2)
    return None


def ensure_converted(src: str | Path, *, progress: bool = True) -> Path:
    """The native copy of an original-format folder, converted on first use and cached under the
    workbench home (keyed by the folder and its weights' sizes and times, so a changed checkpoint
    converts again)."""
    import hashlib

    from .paths import subdir

    src = Path(src).resolve()
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in shards(src)]
    key = hashlib.sha1(json.dumps([str(src), stamp]).encode()).hexdigest()[:12]
    dst = subdir("converted") / f"{src.name}-{key}"
    if not (dst / "config.json").exists():
        summary = convert(src, dst, progress=progress)
        if progress:
            print(summary)
    return dst


def _expected_shapes(config) -> dict[str, tuple]:
    import torch
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _bar(total: int, show: bool):
    if not show:
        return lambda n: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="shard", desc="converting")

    def update(n):
        bar.update(n - bar.n)
        if n == total:
            bar.close()
    return update
