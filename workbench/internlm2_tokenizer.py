"""InternLM2's SentencePiece tokenizer (remote code, ``InternLM2Tokenizer``) → a native fast tokenizer.

The InternLM2-based checkpoints (InternVL-Chat-V1.5, Mini-InternVL-2B, InternVL2-2B/8B/26B) ship a
``tokenizer.model`` and a ``tokenizer_config.json`` whose class lives in Python files of the
checkpoint, which the workbench never runs. That tokenizer splits the text at its added tokens,
encodes each stretch between them with SentencePiece, and puts ``<s>`` first.

transformers' SentencePiece converter (``SpmConverter.build_tokenizer_from_spm_proto``) already
builds a ``tokenizers`` pipeline that encodes like ``SentencePieceProcessor.encode`` from the model
file alone (BPE merges by piece score, byte fallback, the model's own normalizer settings, the dummy
prefix on every stretch in legacy mode). This module adds only what is InternLM2's: ids 0–2 named
``<unk> <s> </s>``, the added tokens of ``tokenizer_config.json`` at their ids, and ``<s>`` first.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserInputError

CLASS = "InternLM2Tokenizer"


def needs_conversion(folder: str | Path) -> bool:
    """True for a folder whose tokenizer is InternLM2's remote-code one (and no tokenizer.json)."""
    folder = Path(folder)
    config = folder / "tokenizer_config.json"
    if (folder / "tokenizer.json").exists() or not config.exists() or not (folder / "tokenizer.model").exists():
        return False
    try:
        cls = json.loads(config.read_text()).get("tokenizer_class") or ""
    except json.JSONDecodeError:
        return False
    return cls.startswith(CLASS)  # InternLM2Tokenizer or InternLM2TokenizerFast


def convert(folder: str | Path):
    """The native ``PreTrainedTokenizerFast`` equivalent to the folder's InternLM2 tokenizer."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    folder = Path(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    proto = import_protobuf().ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    if proto.trainer_spec.model_type != 2:
        raise UserInputError(f"{folder / 'tokenizer.model'} is not a BPE SentencePiece model, as InternLM2's is: "
                             "this checkpoint's tokenizer is not InternLM2's.")
    size = len(proto.pieces)
    names = {i: piece.piece for i, piece in enumerate(proto.pieces)}
    names.update({0: "<unk>", 1: "<s>", 2: "</s>"})
    added = {int(i): entry for i, entry in (settings.get("added_tokens_decoder") or {}).items()}
    for i, entry in added.items():
        if i < size:
            names[i] = entry["content"]  # e.g. <|im_start|> in place of a reserved piece
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, {name: i for i, name in names.items()}, legacy=True)

    specials = {i: {"content": names[i], "special": True} for i in (0, 1, 2)} | added
    for i in sorted(specials):
        entry = specials[i]
        token = AddedToken(entry["content"], special=entry.get("special", True), normalized=False,
                           lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                           single_word=entry.get("single_word", False))
        tokenizer.add_tokens([token])
        if tokenizer.token_to_id(entry["content"]) != i:
            raise UserInputError(f"{folder / 'tokenizer_config.json'}: added token {entry['content']!r} should have id {i}, "
                                 f"but the ids after the {size} SentencePiece pieces are not contiguous.")
    if settings.get("add_bos_token", True):
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token=_content(settings.get("eos_token")) or "</s>",
        unk_token="<unk>", pad_token=_content(settings.get("pad_token")) or "</s>",
        model_max_length=settings.get("model_max_length", 1_000_000), clean_up_tokenization_spaces=False,
    )


def _content(token) -> str | None:
    """A token as tokenizer_config.json writes it: a string, or an AddedToken's fields."""
    return token.get("content") if isinstance(token, dict) else token
