import dataclasses
import json
import threading

import pytest
from PIL import Image

import workbench
from conftest import ANSWER, EXAMPLE, QUESTION
from workbench import chat as C
from workbench.errors import ConversationError, ImageError, UserInputError

RED = Image.new("RGB", (448, 448), "red")
WIDE = Image.new("RGB", (1400, 448), "blue")  # 3 tiles + thumbnail = 4 tiles


def _prompt_ids(conv, text, images=(), videos=()):
    turn = conv._prepare(text, list(images), list(videos), conv.settings)
    return conv._inputs(turn), turn


def _count(ids, tok, token):
    return int((ids == tok.convert_tokens_to_ids(token)).sum())


def test_single_image_becomes_img_context_tiles(tiny):
    conv = tiny.chat(log=False)
    inputs, turn = _prompt_ids(conv, "Describe the image.", [RED])
    tok = tiny.tokenizer
    assert _count(inputs["input_ids"], tok, "<IMG_CONTEXT>") == 256  # one tile, no thumbnail
    assert _count(inputs["input_ids"], tok, "<img>") == 1
    assert inputs["pixel_values"].shape == (1, 3, 448, 448)
    assert turn.prompt_text == "<IMG_CONTEXT>\nDescribe the image."
    answer = conv.ask("Describe the image.", [RED], max_new_tokens=8)
    assert isinstance(answer, str) and conv.turns[-1].answer_tokens == 8


def test_several_images_tags_inline_and_prefix(tiny):
    conv = tiny.chat(log=False, max_tiles=6)
    inputs, turn = _prompt_ids(conv, "Compare <image> with <image>.", [RED, WIDE])
    assert _count(inputs["input_ids"], tiny.tokenizer, "<IMG_CONTEXT>") == 256 * (1 + 4)
    assert turn.prompt_text == "Compare <IMG_CONTEXT> with <IMG_CONTEXT>."
    _, turn = _prompt_ids(conv, "Compare them.", [RED, WIDE])
    assert turn.prompt_text.startswith("Image-1: <IMG_CONTEXT>\nImage-2: <IMG_CONTEXT>\nCompare")
    _, turn = _prompt_ids(conv, f"<img>{EXAMPLE}</img> and <image>: same?", [RED])
    assert turn.image_sources[0] == str(EXAMPLE) and turn.images[0].size == (640, 480)
    assert turn.prompt_text == "<IMG_CONTEXT> and <IMG_CONTEXT>: same?"


def test_max_tiles_limits_the_split(tiny):
    conv = tiny.chat(log=False, max_tiles=2)
    inputs, _ = _prompt_ids(conv, "<image>hi", [WIDE])
    assert inputs["pixel_values"].shape[0] == 3  # 2 tiles + thumbnail


def test_tag_count_must_match(tiny):
    conv = tiny.chat(log=False)
    with pytest.raises(ConversationError, match="2 <image> tag\\(s\\) but 1 image"):
        conv.ask("<image> and <image>", [RED])
    with pytest.raises(ConversationError, match="1 <image> tag\\(s\\) but 0 image"):
        conv.ask("<image> what?")
    with pytest.raises(ConversationError, match="question is empty"):
        conv.ask("   ", [RED])
    with pytest.raises(ImageError, match="Image not found"):
        conv.ask("<image>?", ["/no/such/image.png"])
    assert conv.turns == [], "failed questions leave no turn behind"


def test_multi_turn_keeps_history_and_images(tiny):
    conv = tiny.chat(log=False)
    first = conv.ask("<image>What is this?", [RED], max_new_tokens=5)
    inputs, _ = _prompt_ids(conv, "And this one?", [WIDE])
    text = tiny.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<img>") == 2 and first in text and "What is this?" in text
    assert inputs["pixel_values"].shape[0] == 1 + 4
    conv.ask("And this one?", [WIDE], max_new_tokens=5)
    conv.ask("Text only now.", max_new_tokens=5)
    assert len(conv.turns) == 3 and conv.image_for() is conv.turns[1].images[0]


def test_images_in_one_turn_only_for_v1_5_style_families(tiny):
    v15_like = dataclasses.replace(tiny, spec=dataclasses.replace(tiny.spec, name="v15-like", family="internvl-chat-v1_5",
                                                                  multi_turn_images=False, video=False))
    conv = C.Conversation(v15_like, log=False)
    conv.ask("<image>What is this?", [RED], max_new_tokens=3)
    conv.ask("Tell me more.", max_new_tokens=3)  # text turns are fine
    with pytest.raises(ConversationError, match="images in one turn only.*clear\\(\\)"):
        conv.ask("<image>And this?", [WIDE])
    conv.clear()
    conv.ask("<image>And this?", [WIDE], max_new_tokens=3)
    with pytest.raises(ConversationError, match="not trained on video"):
        C.Conversation(v15_like, log=False).ask("What happens?", videos=[str(EXAMPLE)])


def test_video_frames_become_frame_lines(tiny, tmp_path):
    gif = tmp_path / "clip.gif"
    frames = [Image.new("RGB", (64, 64), (i * 30, 0, 0)) for i in range(8)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    conv = tiny.chat(log=False, video_segments=4)
    inputs, turn = _prompt_ids(conv, "What happens?", videos=[str(gif)])
    text = tiny.tokenizer.decode(inputs["input_ids"][0])
    assert [f"Frame{i}:" in text for i in range(1, 6)] == [True] * 4 + [False]
    assert inputs["pixel_values"].shape[0] == 4  # one tile per frame
    assert conv.ask("What happens?", videos=[str(gif)], max_new_tokens=4) is not None


def test_streaming_yields_the_answer_in_pieces(tiny):
    conv = tiny.chat(log=False)
    pieces = list(conv.stream("<image>Describe.", [RED], max_new_tokens=12))
    assert len(pieces) > 1 and "".join(pieces) == conv.turns[-1].answer
    assert conv.turns[-1].stopped is False and conv.turns[-1].first_token_s is not None
    again = tiny.chat(log=False).ask("<image>Describe.", [RED], max_new_tokens=12)
    assert again == conv.turns[-1].answer, "greedy decoding is deterministic"


def test_the_streamer_passes_each_token_on_at_once(tiny):
    """No holding back until a word ends: punctuation and box digits show as they are decoded,
    and the pieces add up to the whole answer's text."""
    import torch

    tok = tiny.tokenizer
    answer = "<ref>the red circle</ref><box>[[127, 250, 444, 585]]</box>\nNext: done."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    streamer = C._token_streamer()(tok, skip_prompt=True, skip_special_tokens=False)
    streamer.put(torch.tensor([1, 2, 3]))  # the prompt: skipped
    arrived = []
    for i in ids:
        streamer.put(torch.tensor([[i]]))
        arrived.append(streamer.text_queue.qsize())
    streamer.end()
    pieces = [p for p in streamer if p]
    assert arrived == list(range(1, len(ids) + 1))  # one piece per token, none waiting
    assert "".join(pieces) == tok.decode(ids)


def test_stop_from_another_thread_keeps_the_partial_answer(tiny):
    conv = tiny.chat(log=False)
    seen = threading.Event()
    stopper = threading.Thread(target=lambda: (seen.wait(10), conv.stop()))
    stopper.start()
    pieces = []
    for piece in conv.stream("<image>Describe.", [RED], max_new_tokens=400):
        pieces.append(piece)
        seen.set()
    stopper.join()
    turn = conv.turns[-1]
    assert turn.stopped and turn.answer == "".join(pieces) and turn.answer_tokens < 400
    # The conversation stays usable after a stop.
    assert conv.ask("Go on.", max_new_tokens=3) is not None and len(conv.turns) == 2


def test_closing_the_stream_early_counts_as_a_stop(tiny):
    conv = tiny.chat(log=False)
    stream = conv.stream("<image>Describe.", [RED], max_new_tokens=400)
    next(stream)
    stream.close()
    assert conv.turns[-1].stopped and conv.turns[-1].answer_tokens < 400


def test_undo_regenerate_clear(tiny):
    conv = tiny.chat(log=False)
    conv.ask("<image>One.", [RED], max_new_tokens=4)
    conv.ask("Two.", max_new_tokens=4)
    removed = conv.undo()
    assert removed.question == "Two." and len(conv.turns) == 1
    before = conv.turns[-1].answer
    again = "".join(conv.regenerate(max_new_tokens=4))
    assert again == before and len(conv.turns) == 1 and conv.turns[0].images
    sampled = "".join(conv.regenerate(temperature=1.0, seed=3, max_new_tokens=6))
    assert sampled == "".join(conv.regenerate(temperature=1.0, seed=3, max_new_tokens=6)), "seeded sampling repeats"
    conv.clear()
    with pytest.raises(ConversationError, match="Nothing to undo"):
        conv.undo()
    with pytest.raises(ConversationError, match="Nothing to regenerate"):
        conv.regenerate()


def test_settings_are_checked(tiny):
    conv = tiny.chat(log=False)
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}):
        with pytest.raises(UserInputError):
            conv.ask("hi", **bad)
    with pytest.raises(UserInputError, match="Unknown generation setting"):
        conv.ask("hi", beams=4)


def test_a_too_long_prompt_is_refused(tiny):
    conv = tiny.chat(log=False)
    with pytest.raises(ConversationError, match="over the model's 8192-token context"):
        conv.ask("<image>" * 9 + "?", [WIDE] * 9, max_new_tokens=10)  # 9 × 4 tiles × 256 tokens


def test_grounded_answers_keep_ref_and_box(demo_dir):
    session = workbench.load(demo_dir, name="demo-chat")
    try:
        conv = session.chat(log=False)
        answer = "".join(conv.stream("<image>" + QUESTION, [EXAMPLE], max_new_tokens=40))
        assert answer == ANSWER
        refs = conv.turns[-1].grounding.refs
        assert [(r.label, r.boxes) for r in refs] == [("the red circle", [(127, 250, 444, 585)])]
        assert conv.image_for().size == (640, 480)
    finally:
        session.unload()


def test_every_turn_is_logged_and_hooked(tiny, workbench_home):
    seen = []
    C.TURN_HOOKS.append(lambda conv, turn: seen.append(turn.question))
    try:
        conv = tiny.chat()
        conv.ask("<image>logged?", [RED], max_new_tokens=3)
    finally:
        C.TURN_HOOKS.pop()
    assert seen == ["<image>logged?"]
    last = json.loads((workbench_home / "logs" / "chat.jsonl").read_text().splitlines()[-1])
    assert last["question"] == "<image>logged?" and last["session"] == "shared-tiny"
    assert last["images"] == ["<PIL image 448x448>"] and last["answer_tokens"] == 3


def test_every_answer_is_generated_on_one_thread(tiny, tiny_dir):
    # CUDA-graph decode (static cache on a GPU) keeps thread-local state: one generation thread.
    import workbench.session as S

    other = workbench.load(tiny_dir, name="other-thread-check")
    try:
        tiny.chat(log=False).ask("one", max_new_tokens=2)
        other.chat(log=False).ask("two", max_new_tokens=2)
        assert len(S._generation_executor._threads) == 1
    finally:
        other.unload()
