"""InternLM2's remote-code tokenizer → native: a tiny SentencePiece BPE model trained here, with
InternLM2's layout (ids 0–2 <unk> <s> </s>, reserved pieces renamed by tokenizer_config.json, the
image and grounding tokens after the pieces), encoded by the converted tokenizer and by
SentencePiece itself the way InternLM2Tokenizer does it (each stretch between added tokens
separately, <s> first)."""

import json
import re

import pytest
import sentencepiece as spm

from workbench import internlm2_tokenizer
from workbench.errors import UserInputError

CORPUS = [
    "Please provide the bounding box coordinate of the region this sentence describes.",
    "The image shows a red circle on the left, a green triangle at the top and a blue square.",
    "你好，这是一张图片。图中有一个红色的圆。书生多模态大模型",
    "def main():\n    return 42  # code, with  double spaces\tand tabs",
    "Numbers 0123456789 and [[125, 250, 375, 583]] boxes.",
    "user\nassistant\nsystem\n",
] * 20
# InternLM2 keeps reserved pieces that its tokenizer_config.json renames (ids 92538–92543 there).
RESERVED = ["[UNUSED_TOKEN_0]", "[UNUSED_TOKEN_1]", "[UNUSED_TOKEN_2]", "[UNUSED_TOKEN_3]"]
RENAMED = {3: "<|im_start|>", 4: "<|im_end|>", 5: "<|action_start|>"}
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]


def write_tokenizer(folder, *, dummy_prefix=True, vocab=400):
    """tokenizer.model + tokenizer_config.json as an InternLM2-based InternVL checkpoint ships them."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(folder / "sp"), vocab_size=vocab, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=RESERVED, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "sp.model").rename(folder / "tokenizer.model")
    (folder / "sp.vocab").unlink()
    added = {str(i): {"content": c, "special": True, "normalized": False} for i, c in RENAMED.items()}
    added |= {str(vocab + i): {"content": c, "special": True, "normalized": False} for i, c in enumerate(IMAGE_TOKENS)}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
        "unk_token": "<unk>", "added_tokens_decoder": added}))
    return vocab + len(IMAGE_TOKENS)


def reference_encode(folder, text):
    """What InternLM2Tokenizer does: split at added and special tokens, SentencePiece for the rest, <s> first."""
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {e["content"]: int(i) for i, e in config["added_tokens_decoder"].items()} | {"<unk>": 0, "<s>": 1, "</s>": 2}
    pattern = "(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
    ids = [1]
    for chunk in re.split(pattern, text):
        if chunk in specials:
            ids.append(specials[chunk])
        elif chunk:
            ids += sp.encode(chunk)
    return ids


TEXTS = [
    "Describe the image.",
    "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型<|im_end|><|im_start|>user\n"
    "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhere is <ref>the red circle</ref>?<|im_end|><|im_start|>assistant\n",
    "  leading spaces,  double  spaces, trailing \n\n\ttab and newlines  ",
    "emoji 🙂 and rare characters ∮ ß — fall back to bytes",
    "<ref>the red circle</ref><box>[[125, 250, 375, 583]]</box><|im_end|>",
    "literal <s> and </s> and a reserved piece [UNUSED_TOKEN_3] in text",  # (renamed ones are not text any more)
]


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_converted_tokenizer_encodes_like_sentencepiece(tmp_path, dummy_prefix):
    size = write_tokenizer(tmp_path, dummy_prefix=dummy_prefix)
    assert internlm2_tokenizer.needs_conversion(tmp_path)
    tok = internlm2_tokenizer.convert(tmp_path)
    assert len(tok) == size
    assert [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2, 3, 4]
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == 402
    for text in TEXTS:
        assert tok(text)["input_ids"] == reference_encode(tmp_path, text), text
    plain = "Describe the image, please: 你好."
    assert tok.decode(tok(plain)["input_ids"], skip_special_tokens=True) == plain

    # Saved, it loads natively (no remote code) and is no longer "to convert".
    expected = reference_encode(tmp_path, TEXTS[1])
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert not internlm2_tokenizer.needs_conversion(tmp_path)
    assert again(TEXTS[1])["input_ids"] == expected


def test_tokenizers_that_are_not_internlm2s_are_left_alone_or_refused(tmp_path):
    write_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "LlamaTokenizer"}))
    assert not internlm2_tokenizer.needs_conversion(tmp_path)

    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"added_tokens_decoder": {
        "450": {"content": "<img>", "special": True}}}))  # a gap after the 400 pieces
    with pytest.raises(UserInputError, match="'<img>' should have id 450"):
        internlm2_tokenizer.convert(tmp_path)
