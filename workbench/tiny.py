"""The tiny offline InternVL the project builds itself.

Real token geometry (448-px tiles, patch 14, pixel shuffle 0.5 → 256 tokens per tile, thumbnail
tile), real transformers classes (``InternVLForConditionalGeneration`` with a Qwen2 language model,
``InternVLProcessor`` with ``GotOcr2ImageProcessor``), InternVL's special tokens and the InternVL2.5
chat template — but layers a few dozen wide, so a CPU runs it in milliseconds. Its weights are
random (seeded): it answers with gibberish, which is what tests want. The demo model that really
grounds is trained on top of this builder.

The build is deterministic: same seed, same files. It lands in ``home()/models/tiny-v1`` and is
written to a temporary folder first, so a half-built model is never picked up.
"""

from __future__ import annotations

from pathlib import Path

from .paths import built_model

TINY_VERSION = "tiny-v1"
SEED = 1234

# Order matters: these become ids 0.. in the tokenizer. InternVL's nine grounding/image tokens
# follow the ChatML markers, as in the real tokenizers.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
    "<video>",
]
# Named roles that transformers' InternVLProcessor looks up on the tokenizer.
PROCESSOR_TOKENS = {
    "start_image_token": "<img>", "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
}

_WORDS = (
    "the a an of and in on at to is are with this that there what where which how many please provide "
    "bounding box coordinate region sentence describes describe image picture photo frame video object "
    "objects red green blue yellow orange purple pink black white gray brown cyan circle square triangle "
    "rectangle star ellipse small large big tiny left right top bottom middle center corner above below "
    "next beside near inside find all every one two three four five answer question hello hi thank you "
    "yes no I see it they them color colour shape size position first second third compare changed "
    "summarise summarize clip scene background foreground"
).split()


def _corpus() -> list[str]:
    """A small fixed corpus: vocabulary words, their combinations, prompt phrases and digits."""
    lines = [" ".join(_WORDS)]
    for i, w in enumerate(_WORDS):
        lines.append(f"the {w} {_WORDS[(i * 7) % len(_WORDS)]} {_WORDS[(i * 13) % len(_WORDS)]}.")
    lines += [
        "Please provide the bounding box coordinate of the region this sentence describes:",
        "Describe the image. What is in the picture? Frame1: Frame2: [[0, 0, 1000, 1000]]",
        "0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ( ) [ ] ' \" - _ / \n",
    ]
    return lines


def build_tokenizer():
    """A byte-level BPE tokenizer (digits split one by one, as Qwen2's does) with InternVL's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=dict(PROCESSOR_TOKENS), model_max_length=8192,
    )


def build_processor(tokenizer, *, max_tiles: int = 6, template: str = "internvl2_5", system: str | None = None):
    """An ``InternVLProcessor`` for 448-px tiles with ImageNet normalisation, as InternVL uses."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    from .templates import chat_template

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image_processor = GotOcr2ImageProcessor(
        crop_to_patches=True, min_patches=1, max_patches=max_tiles, size={"height": 448, "width": 448},
        image_mean=mean, image_std=std, do_convert_rgb=True,
    )
    video_processor = InternVLVideoProcessor(
        size={"height": 448, "width": 448}, image_mean=mean, image_std=std, do_sample_frames=False,
    )
    return InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        image_seq_length=256, chat_template=chat_template(template, system),
    )


def build(dest: Path, *, seed: int = SEED) -> Path:
    """Write the tiny model (config, weights, tokenizer, processor, template) into ``dest``."""
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration

    from .architectures import build_config

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = build_config("tiny", vocab=len(tokenizer), image_token_id=tokenizer.context_image_token_id, **ids)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**ids, do_sample=False, max_new_tokens=64)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def ensure_built() -> Path:
    """The tiny model's directory, building it on first use (atomically: temp dir, then rename)."""
    return built_model(TINY_VERSION, build)
