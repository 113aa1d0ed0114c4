"""Original-format checkpoints convert to the native model: tiny random checkpoints in the original
layout (original key names and config schema), converted, and compared with a reference forward pass
written here for the original layout (fused qkv / wqkv used directly, pixel shuffle v2)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import EXAMPLE, REPO
from workbench import convert
from workbench.convert import ConversionError

IMG_CONTEXT = 90


# -- tiny original-format checkpoints ---------------------------------------------------------------

def vision_weights(g, v):
    c, m = v["hidden_size"], v["intermediate_size"]
    w = {"vision_model.embeddings.class_embedding": torch.randn(1, 1, c, generator=g),
         "vision_model.embeddings.position_embedding": torch.randn(1, 1025, c, generator=g) * 0.1,
         "vision_model.embeddings.patch_embedding.weight": torch.randn(c, 3, 14, 14, generator=g) * 0.05,
         "vision_model.embeddings.patch_embedding.bias": torch.randn(c, generator=g) * 0.1}
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "ls1": torch.rand(c, generator=g), p + "ls2": torch.rand(c, generator=g),
              p + "attn.qkv.weight": torch.randn(3 * c, c, generator=g) / math.sqrt(c),
              p + "attn.proj.weight": torch.randn(c, c, generator=g) / math.sqrt(c),
              p + "attn.proj.bias": torch.randn(c, generator=g) * 0.1,
              p + "mlp.fc1.weight": torch.randn(m, c, generator=g) / math.sqrt(c),
              p + "mlp.fc1.bias": torch.randn(m, generator=g) * 0.1,
              p + "mlp.fc2.weight": torch.randn(c, m, generator=g) / math.sqrt(m),
              p + "mlp.fc2.bias": torch.randn(c, generator=g) * 0.1}
        for norm in ("norm1", "norm2"):
            w[p + f"{norm}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
            if v["norm_type"] == "layer_norm":
                w[p + f"{norm}.bias"] = 0.1 * torch.randn(c, generator=g)
        if v["qkv_bias"]:
            w[p + "attn.qkv.bias"] = torch.randn(3 * c, generator=g) * 0.1
        if v["qk_normalization"]:
            w[p + "attn.q_norm.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
            w[p + "attn.k_norm.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    return w


def projector_weights(g, cv, h):
    return {"mlp1.0.weight": 1 + 0.1 * torch.randn(4 * cv, generator=g), "mlp1.0.bias": 0.1 * torch.randn(4 * cv, generator=g),
            "mlp1.1.weight": torch.randn(h, 4 * cv, generator=g) / math.sqrt(4 * cv), "mlp1.1.bias": 0.1 * torch.randn(h, generator=g),
            "mlp1.3.weight": torch.randn(h, h, generator=g) / math.sqrt(h), "mlp1.3.bias": 0.1 * torch.randn(h, generator=g)}


def llm_weights(g, t, arch):
    h, m, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    d = h // heads
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])  # noqa: E731
    if arch == "InternLM2ForCausalLM":
        w = {"language_model.model.tok_embeddings.weight": torch.randn(vocab, h, generator=g),
             "language_model.model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g),
             "language_model.output.weight": r(vocab, h)}
        for i in range(t["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            w |= {p + "attention.wqkv.weight": r((heads + 2 * kv) * d, h), p + "attention.wo.weight": r(h, h),
                  p + "feed_forward.w1.weight": r(m, h), p + "feed_forward.w3.weight": r(m, h),
                  p + "feed_forward.w2.weight": r(h, m),
                  p + "attention_norm.weight": 1 + 0.1 * torch.randn(h, generator=g),
                  p + "ffn_norm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
        return w
    w = {"language_model.model.embed_tokens.weight": torch.randn(vocab, h, generator=g),
         "language_model.model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g),
         "language_model.lm_head.weight": r(vocab, h)}
    if arch == "Phi3ForCausalLM":  # fused projections, kept fused by the native phi3
        for i in range(t["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            w |= {p + "self_attn.qkv_proj.weight": r((heads + 2 * kv) * d, h), p + "self_attn.o_proj.weight": r(h, h),
                  p + "mlp.gate_up_proj.weight": r(2 * m, h), p + "mlp.down_proj.weight": r(h, m),
                  p + "input_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=g),
                  p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
        return w
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        w |= {p + "self_attn.q_proj.weight": r(h, h), p + "self_attn.k_proj.weight": r(kv * d, h),
              p + "self_attn.v_proj.weight": r(kv * d, h), p + "self_attn.o_proj.weight": r(h, h),
              p + "mlp.gate_proj.weight": r(m, h), p + "mlp.up_proj.weight": r(m, h), p + "mlp.down_proj.weight": r(h, m),
              p + "input_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=g),
              p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
        if arch == "Qwen2ForCausalLM":
            for name, n in (("q", h), ("k", kv * d), ("v", kv * d)):
                w[p + f"self_attn.{name}_proj.bias"] = 0.1 * torch.randn(n, generator=g)
    return w


TOWER_6B = dict(norm_type="rms_norm", qkv_bias=False, qk_normalization=True)  # InternViT-6B-like
TOWER_300M = dict(norm_type="layer_norm", qkv_bias=True, qk_normalization=False)  # InternViT-300M-like
# Each released family as a tiny checkpoint: (tower, LLM architecture, LLM settings, template).
FAMILIES = {
    # InternVL-Chat-V1.5 (and its int8), InternVL2-26B: 6B tower + InternLM2-20B.
    "v1_5": (TOWER_6B, "InternLM2ForCausalLM", {}, "internlm2-chat"),
    # Mini-InternVL-Chat-2B-V1.5, InternVL2-2B, InternVL2-8B (θ 1e6, dynamic rope ×2): 300M tower + InternLM2.
    "internvl2-8b": (TOWER_300M, "InternLM2ForCausalLM",
                     dict(rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 2.0}), "internlm2-chat"),
    # Mini-InternVL-Chat-4B-V1.5, InternVL2-4B: 300M tower + Phi-3-mini (fused qkv_proj, gate_up_proj).
    "internvl2-4b": (TOWER_300M, "Phi3ForCausalLM", dict(num_key_value_heads=4), "phi3-chat"),
    # InternVL2-1B: 300M tower + Qwen2-0.5B (qkv biases, θ 1e6).
    "internvl2-1b": (TOWER_300M, "Qwen2ForCausalLM", dict(rope_theta=1e6), "Hermes-2"),
    # InternVL2-40B: 6B tower + Nous-Hermes-2-Yi-34B (a llama, θ 5e6).
    "internvl2-40b": (TOWER_6B, "LlamaForCausalLM", dict(rope_theta=5e6), "Hermes-2"),
    # InternVL2-Llama3-76B: 6B tower + Llama-3-70B (θ 5e5).
    "internvl2-llama3-76b": (TOWER_6B, "LlamaForCausalLM", dict(rope_theta=5e5), "internvl2_5"),
}


def write_original(folder, family, seed=0, **llm_overrides):
    vision_kind, arch, llm_extra, template = FAMILIES[family]
    llm_extra = llm_extra | llm_overrides
    v = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=448,
             patch_size=14, layer_norm_eps=1e-6, **vision_kind)
    t = dict(architectures=[arch], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=100, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
             bos_token_id=1, eos_token_id=2, pad_token_id=0) | llm_extra
    config = dict(architectures=["InternVLChatModel"], model_type="internvl_chat", vision_config=v, llm_config=t,
                  downsample_ratio=0.5, select_layer=-1, ps_version="v2", template=template, torch_dtype="float32",
                  max_dynamic_patch=6, use_thumbnail=True)
    g = torch.Generator().manual_seed(seed)
    weights = vision_weights(g, v) | projector_weights(g, 32, 64) | llm_weights(g, t, arch)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {str(IMG_CONTEXT): {"content": "<IMG_CONTEXT>", "special": True}}}))
    (folder / "modeling_internvl_chat.py").write_text("# remote code: not used, not copied\n")
    save_file(weights, str(folder / "model.safetensors"))
    return config, weights


# -- the reference forward pass, straight from the original layout ---------------------------------

def norm(x, w, b, kind, eps=1e-6):
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], w, b, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference_vision(w, v, pixels):
    c, heads = v["hidden_size"], v["num_attention_heads"]
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"], w["vision_model.embeddings.patch_embedding.bias"],
                 stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, c), x], 1)
    x = x + w["vision_model.embeddings.position_embedding"]
    kind = v["norm_type"]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = norm(x, w[p + "norm1.weight"], w.get(p + "norm1.bias"), kind)
        qkv = h @ w[p + "attn.qkv.weight"].T + (w[p + "attn.qkv.bias"] if v["qkv_bias"] else 0)
        q, k, val = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
        if v["qk_normalization"]:  # over the whole width, before splitting into heads
            q, k = norm(q, w[p + "attn.q_norm.weight"], None, "rms_norm"), norm(k, w[p + "attn.k_norm.weight"], None, "rms_norm")
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads), -1) @ split(val)
        a = a.transpose(1, 2).reshape(x.shape) @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        x = x + w[p + "ls1"] * a
        h = norm(x, w[p + "norm2.weight"], w.get(p + "norm2.bias"), kind)
        h = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"]) @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]
        x = x + w[p + "ls2"] * h
    x = x[:, 1:]
    n, side = x.shape[0], int(math.sqrt(x.shape[1]))
    x = x.reshape(n, side, side, c)
    # pixel shuffle, "v2" order, as the original code does it
    x = x.view(n, side, side // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, side // 2, side // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, -1, c * 4)
    x = F.layer_norm(x, x.shape[-1:], w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    x = F.gelu(x @ w["mlp1.1.weight"].T + w["mlp1.1.bias"]) @ w["mlp1.3.weight"].T + w["mlp1.3.bias"]
    return x


def rope(x, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.outer(torch.arange(x.shape[-2]).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def reference_llm(w, t, arch, embeds):
    h, heads, kv = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"]
    d, g = h // heads, heads // kv
    x, n = embeds, embeds.shape[0]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        if arch == "InternLM2ForCausalLM":
            a_in = norm(x, w[p + "attention_norm.weight"], None, "rms_norm")
            fused = a_in @ w[p + "attention.wqkv.weight"].T  # rows: per KV head, g query heads then k then v
            qs, ks, vs = [], [], []
            for group in range(kv):
                block = fused[..., group * (g + 2) * d:(group + 1) * (g + 2) * d]
                qs += [block[..., j * d:(j + 1) * d] for j in range(g)]
                ks.append(block[..., g * d:(g + 1) * d])
                vs.append(block[..., (g + 1) * d:(g + 2) * d])
            o_w = w[p + "attention.wo.weight"]
        elif arch == "Phi3ForCausalLM":  # fused qkv_proj rows: all q heads, then k, then v
            a_in = norm(x, w[p + "input_layernorm.weight"], None, "rms_norm")
            fused = a_in @ w[p + "self_attn.qkv_proj.weight"].T
            qs = [fused[..., j * d:(j + 1) * d] for j in range(heads)]
            ks = [fused[..., (heads + j) * d:(heads + j + 1) * d] for j in range(kv)]
            vs = [fused[..., (heads + kv + j) * d:(heads + kv + j + 1) * d] for j in range(kv)]
            o_w = w[p + "self_attn.o_proj.weight"]
        else:
            a_in = norm(x, w[p + "input_layernorm.weight"], None, "rms_norm")
            q = a_in @ w[p + "self_attn.q_proj.weight"].T + w.get(p + "self_attn.q_proj.bias", 0)
            k = a_in @ w[p + "self_attn.k_proj.weight"].T + w.get(p + "self_attn.k_proj.bias", 0)
            val = a_in @ w[p + "self_attn.v_proj.weight"].T + w.get(p + "self_attn.v_proj.bias", 0)
            qs = [q[..., j * d:(j + 1) * d] for j in range(heads)]
            ks = [k[..., j * d:(j + 1) * d] for j in range(kv)]
            vs = [val[..., j * d:(j + 1) * d] for j in range(kv)]
            o_w = w[p + "self_attn.o_proj.weight"]
        outs = []
        for j in range(heads):
            q, k = rope(qs[j], t["rope_theta"]), rope(ks[j // g], t["rope_theta"])
            outs.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1) @ vs[j // g])
        x = x + torch.cat(outs, -1) @ o_w.T
        if arch == "InternLM2ForCausalLM":
            m_in = norm(x, w[p + "ffn_norm.weight"], None, "rms_norm")
            x = x + (F.silu(m_in @ w[p + "feed_forward.w1.weight"].T) * (m_in @ w[p + "feed_forward.w3.weight"].T)) @ \
                w[p + "feed_forward.w2.weight"].T
        elif arch == "Phi3ForCausalLM":  # gate_up_proj rows: the gate half, then the up half
            m_in = norm(x, w[p + "post_attention_layernorm.weight"], None, "rms_norm")
            gate, up = (m_in @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, -1)
            x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        else:
            m_in = norm(x, w[p + "post_attention_layernorm.weight"], None, "rms_norm")
            x = x + (F.silu(m_in @ w[p + "mlp.gate_proj.weight"].T) * (m_in @ w[p + "mlp.up_proj.weight"].T)) @ \
                w[p + "mlp.down_proj.weight"].T
    x = norm(x, w["language_model.model.norm.weight"], None, "rms_norm")
    head = w["language_model.output.weight"] if arch == "InternLM2ForCausalLM" else w["language_model.lm_head.weight"]
    return x @ head.T


def reference_logits(config, w, ids, pixels):
    arch = config["llm_config"]["architectures"][0]
    emb_key = "language_model.model.tok_embeddings.weight" if arch == "InternLM2ForCausalLM" else \
        "language_model.model.embed_tokens.weight"
    embeds = w[emb_key][ids].clone()
    image = reference_vision(w, config["vision_config"], pixels).reshape(-1, config["llm_config"]["hidden_size"])
    embeds[ids == IMG_CONTEXT] = image
    return reference_llm(w, config["llm_config"], arch, embeds)


# -- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_logits_match_the_original_layout(family, tmp_path):
    from transformers import AutoModelForImageTextToText

    config, weights = write_original(tmp_path / "orig", family)
    summary = convert.convert(tmp_path / "orig", tmp_path / "native", progress=False)
    assert summary.tensors_in == len(weights) and summary.llm == config["llm_config"]["architectures"][0]
    assert not (tmp_path / "native" / "modeling_internvl_chat.py").exists()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.tensor([[1, 5, 7] + [IMG_CONTEXT] * 256 + [9, 11, 13, 4]])
    pixels = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        native = model(input_ids=ids, pixel_values=pixels).logits[0]
        expected = reference_logits(config, weights, ids[0], pixels)
    assert native.shape == expected.shape
    assert torch.allclose(native, expected, atol=1e-4, rtol=1e-4), (native - expected).abs().max()


def test_bad_checkpoints_are_refused_clearly_and_leave_nothing(tmp_path):
    config, _ = write_original(tmp_path / "orig", "internvl2-1b")
    with pytest.raises(ConversionError, match="not an original-format"):
        convert.convert(tmp_path, tmp_path / "x")

    bad = json.loads((tmp_path / "orig" / "config.json").read_text())
    bad["llm_config"]["architectures"] = ["MysteryForCausalLM"]
    (tmp_path / "orig" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConversionError, match="Unknown language model 'MysteryForCausalLM'"):
        convert.convert(tmp_path / "orig", tmp_path / "x")

    bad["llm_config"]["architectures"] = ["Qwen2ForCausalLM"]
    bad["llm_config"]["hidden_size"] = 128  # disagrees with the weights
    (tmp_path / "orig" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConversionError, match=r"model.safetensors: .* has shape"):
        convert.convert(tmp_path / "orig", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*")), "no half-written conversion left"

    bad["llm_config"]["hidden_size"] = 64
    bad["ps_version"] = "v1"
    (tmp_path / "orig" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConversionError, match="ps_version 'v1'"):
        convert.convert(tmp_path / "orig", tmp_path / "x")

    bad["ps_version"] = "v2"
    (tmp_path / "orig" / "config.json").write_text(json.dumps(bad))
    (tmp_path / "orig" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ConversionError, match="names shards that are not there: model-00001-of-00002"):
        convert.convert(tmp_path / "orig", tmp_path / "x")


def test_cli_and_load_convert_once(tmp_path, tiny_dir):
    """`workbench convert` prints its summary; load() on an original folder converts once, caches the
    result under the workbench home and reuses it."""
    import shutil
    import subprocess
    import sys

    import workbench
    from workbench import session as S

    write_original(tmp_path / "orig", "internvl2-1b")
    out = subprocess.run([sys.executable, "-m", "workbench", "convert", str(tmp_path / "orig"), str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Qwen2ForCausalLM language model" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "workbench", "convert", str(tmp_path / "orig"), str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "exists already" in out.stderr

    for name in ("tokenizer.json", "tokenizer_config.json"):  # a tokenizer that loads natively
        shutil.copy(tiny_dir / name, tmp_path / "orig" / name)
    first, _ = S.resolve(tmp_path / "orig")
    again, _ = S.resolve(tmp_path / "orig")
    assert first == again and (first / "workbench_converted.json").exists()
    mtime = (first / "config.json").stat().st_mtime
    session = workbench.load(tmp_path / "orig", name="converted")
    try:
        assert session.model.config.text_config.model_type == "qwen2"
    finally:
        workbench.unload("converted")
    assert (first / "config.json").stat().st_mtime == mtime, "converted once, then reused"


# -- the int8 V1.5: int8 rows with their absmax scales, as an 8-bit bitsandbytes load saves them ----

def quantize_int8(weights, keys):
    """bitsandbytes' row-wise absmax int8: ``weight`` int8, ``SCB`` the row's absmax, ``weight_format``."""
    out = dict(weights)
    for key in keys:
        w = out[key]
        scb = w.abs().amax(1)
        module = key.removesuffix(".weight")
        out[key] = torch.round(w * 127 / scb[:, None]).to(torch.int8)
        out[module + ".SCB"] = scb
        out[module + ".weight_format"] = torch.tensor(0, dtype=torch.uint8)
    return out


def write_int8(folder, **llm_overrides):
    """A tiny InternVL-Chat-V1.5-Int8: the LLM's and the tower's linear weights stored in int8."""
    config, weights = write_original(folder, "v1_5", **llm_overrides)
    linear = [k for k in weights if k.endswith(".weight") and weights[k].dim() == 2 and
              any(m in k for m in ("wqkv", "wo.", "w1.", "w2.", "w3.", "attn.qkv", "attn.proj", "fc1", "fc2"))]
    stored = quantize_int8(weights, linear)
    save_file(stored, str(folder / "model.safetensors"))
    config["quantization_config"] = {"load_in_8bit": True, "quant_method": "bitsandbytes"}
    (folder / "config.json").write_text(json.dumps(config))
    dequantized = {k: (v.float() * stored[k[:-len(".weight")] + ".SCB"][:, None] / 127 if v.dtype == torch.int8 else v)
                   for k, v in stored.items() if not k.endswith((".SCB", ".weight_format"))}
    return config, stored, dequantized, linear


def test_int8_checkpoint_dequantizes_losslessly_and_asks_for_a_gpu(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    import workbench
    from workbench.errors import EnvironmentProblem

    config, stored, dequantized, linear = write_int8(tmp_path / "orig")
    summary = convert.convert(tmp_path / "orig", tmp_path / "native", progress=False)
    assert summary.dequantized == len(linear) and "int8 weights dequantized" in str(summary)
    assert convert.quantization(tmp_path / "native") == "int8"
    assert "quantization_config" not in json.loads((tmp_path / "native" / "config.json").read_text())

    # Logits equal the original layout's forward pass on the dequantized weights.
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 7] + [IMG_CONTEXT] * 256 + [9, 11, 13, 4]])
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        native = model(input_ids=ids, pixel_values=pixels).logits[0]
    # (float16 weights: the reference runs on the same rounded values)
    rounded = {k: v.to(torch.float16).float() for k, v in dequantized.items()}
    assert torch.allclose(native, reference_logits(config, rounded, ids[0], pixels), atol=1e-4, rtol=1e-4)

    # bitsandbytes' row-wise absmax quantization of the written float16 weights gives back the stored
    # int8 rows exactly.
    native_weights = {}
    for shard in (tmp_path / "native").glob("*.safetensors"):
        native_weights |= load_file(shard)
    pairs = {"language_model.model.layers.0.attention.wo.weight": "model.language_model.layers.0.self_attn.o_proj.weight",
             "language_model.model.layers.1.feed_forward.w1.weight": "model.language_model.layers.1.mlp.gate_proj.weight",
             "vision_model.encoder.layers.0.mlp.fc2.weight": "model.vision_tower.encoder.layer.0.mlp.fc2.weight"}
    for old, new in pairs.items():
        assert native_weights[new].dtype == torch.float16
        w = native_weights[new].float()
        requantized = torch.round(w * 127 / w.abs().amax(1)[:, None]).to(torch.int8)
        assert torch.equal(requantized, stored[old]), old

    # On a machine without a GPU, loading says what it needs instead of failing inside bitsandbytes.
    with pytest.raises(EnvironmentProblem, match="int8 checkpoint: it loads in 8 bit with bitsandbytes"):
        workbench.load(tmp_path / "native", name="int8")

    # A weight stored in int8 without its scale is an incomplete download, said with the file's name.
    del stored["language_model.model.layers.0.attention.wo.SCB"]
    save_file(stored, str(tmp_path / "orig" / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"model.safetensors: language_model.model.layers.0.attention.wo.weight "
                                              r"is int8 but the checkpoint has no .*SCB"):
        convert.convert(tmp_path / "orig", tmp_path / "again", progress=False)
    assert not (tmp_path / "again").exists()


def test_full_disk_is_refused_before_writing_and_midway(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    write_original(tmp_path / "orig", "internvl2-1b")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConversionError, match=r"Not enough disk for .*native: .* GB needed, 0.0 GB free"):
        convert.convert(tmp_path / "orig", tmp_path / "native", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "native").exists() and not list(tmp_path.glob(".native*"))

    # The disk fills while shards are written (another writer): a clear error, and nothing is left.
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ConversionError, match="No space left on device. Free some space and convert again"):
        convert.convert(tmp_path / "orig", tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists() and not list(tmp_path.glob(".native*"))


# -- the family's tokenizer and template: the same token ids as the original chat code ---------------

# The original chat code's prompt (InternVL's conversation.py, "MPT" style): system turn + separator,
# then role + message + separator for each turn, the open assistant role last; `<image>` becomes
# <img> + 256 <IMG_CONTEXT> per tile + </img>.
RULES = {
    "internlm2-chat": ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
    "Hermes-2": ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
    "internvl2_5": ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"),
    "phi3-chat": ("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>"),
}


def original_prompt(template, system, turns, tiles):
    sys_open, user, assistant, sep = RULES[template]
    text = sys_open + system + sep
    for question, answer in turns:
        text += user + question + sep + assistant + (answer + sep if answer is not None else "")
    return text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 256 * tiles + "</img>")


def write_with_tokenizer(folder, family, tiny_dir, tmp_path, **llm_overrides):
    """A tiny original checkpoint with its family's kind of tokenizer: InternLM2's SentencePiece one
    (remote code), or one that loads natively (the tiny model's)."""
    import shutil

    from test_internlm2_tokenizer import write_tokenizer

    if FAMILIES[family][1] == "InternLM2ForCausalLM":
        sp = tmp_path / "sp-tokenizer"
        sp.mkdir(exist_ok=True)
        vocab = write_tokenizer(sp)
        files = [sp / "tokenizer.model", sp / "tokenizer_config.json"]
    else:
        vocab = json.loads((tiny_dir / "config.json").read_text())["text_config"]["vocab_size"]
        files = [tiny_dir / "tokenizer.json", tiny_dir / "tokenizer_config.json"]
    config, weights = write_original(folder, family, vocab_size=vocab, **llm_overrides)
    for f in files:
        shutil.copy(f, folder / f.name)
    return config, weights


@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_template_gives_the_original_token_ids(family, tmp_path, tiny_dir):
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    from test_internlm2_tokenizer import reference_encode
    from workbench.chat import _stop_ids
    from workbench.templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM

    orig = tmp_path / "orig"
    write_with_tokenizer(orig, family, tiny_dir, tmp_path)
    template = FAMILIES[family][3]
    system = INTERNVL2_5_SYSTEM if template == "internvl2_5" else INTERNVL2_SYSTEM
    if family == "internvl2-8b":  # the checkpoint's own conversation.py names the system message
        system = "You are TinyVL, a test model."
        (orig / "conversation.py").write_text(
            "register_conv_template(Conversation(name='Hermes-2', system_message='Not this one.'))\n"
            f"register_conv_template(Conversation(name='{template}', system_template='<|im_start|>system\\n"
            f"{{system_message}}', system_message='{system}', roles=('<|im_start|>user\\n', '<|im_start|>assistant\\n')))\n")
    summary = convert.convert(orig, tmp_path / "native", progress=False)
    assert summary.processor.startswith(f"built: template {template}"), summary.processor
    internlm2 = FAMILIES[family][1] == "InternLM2ForCausalLM"
    assert ("InternLM2 tokenizer converted" in summary.processor) == internlm2

    processor = AutoProcessor.from_pretrained(tmp_path / "native")
    messages = [{"role": "user", "content": "<IMG_CONTEXT>\nDescribe the image."},
                {"role": "assistant", "content": "A red circle, top left."}, {"role": "user", "content": "Where is it?"}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    got = processor(text=[text], images=[Image.open(EXAMPLE)], return_tensors="pt")
    tiles = got["pixel_values"].shape[0]
    assert tiles > 1, "several tiles and the thumbnail, as the original splits a 640x480 image"
    expected_text = original_prompt(template, system, [("<image>\nDescribe the image.", "A red circle, top left."),
                                                       ("Where is it?", None)], tiles)
    expected = reference_encode(orig, expected_text) if internlm2 else \
        AutoTokenizer.from_pretrained(orig)(expected_text)["input_ids"]
    assert got["input_ids"][0].tolist() == expected
    if template != "phi3-chat":  # generation stops at the family's end-of-turn token
        assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in _stop_ids(processor.tokenizer)


@pytest.mark.slow
def test_internlm2_checkpoint_loads_once_chats_and_its_lora_merges(tmp_path, tiny_dir, dataset, mlflow_server):
    """InternVL-Chat-V1.5's layout with InternLM2's SentencePiece tokenizer: load() converts it once,
    chats; a LoRA fine-tune of it (background job) merges into a model equal to base + adapter."""
    import workbench
    from workbench import jobs

    orig = tmp_path / "v1_5"
    write_with_tokenizer(orig, "v1_5", tiny_dir, tmp_path, max_position_embeddings=8192)  # 13 tiles fit
    session = workbench.load(orig, name="v1_5")
    try:
        conv = session.chat(log=False)
        answer = conv.ask("<image>\nDescribe the image.", [EXAMPLE], max_new_tokens=8)
        assert isinstance(answer, str) and conv.turns[-1].answer == answer
        inputs = conv._inputs(conv._prepare("Where is the red circle?", [EXAMPLE], [], conv.settings))
    finally:
        workbench.unload("v1_5")
    converted = convert.ensure_converted(orig, progress=False)
    assert (converted / "tokenizer.json").exists() and not (converted / "modeling_internvl_chat.py").exists()

    job = jobs.launch(REPO / "recipes" / "demo-lora.yaml", model=str(orig), dataset=[str(dataset / "train.jsonl")],
                      max_steps=2, save_steps=2, max_tiles=1, register_as="test-v1_5-lora")
    assert job.wait(600) == "finished", job.log_tail()
    merged_dir = job.merge()
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32).eval()
    adapted = workbench.load(orig, adapter=job.output_dir / "final", name="v1_5-lora")
    try:
        with torch.no_grad():
            a = adapted.model(**inputs).logits
            b = merged(**inputs).logits
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    finally:
        workbench.unload("v1_5-lora")
