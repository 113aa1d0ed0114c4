from jinja2 import Environment

from workbench.templates import INTERNVL2_SYSTEM, chat_template

MSGS = [{"role": "user", "content": "<IMG_CONTEXT>\nHi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"}]


def render(style, system=None, messages=MSGS):
    return Environment().from_string(chat_template(style, system)).render(messages=messages, add_generation_prompt=True)


def test_internlm2_chat_has_no_newline_between_turns():
    out = render("internlm2-chat", INTERNVL2_SYSTEM)
    assert out == (f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\n<IMG_CONTEXT>\nHi<|im_end|>"
                   "<|im_start|>assistant\nHello<|im_end|><|im_start|>user\nAgain<|im_end|><|im_start|>assistant\n")


def test_internvl2_5_puts_a_newline_after_each_turn():
    out = render("internvl2_5")
    assert out == ("<|im_start|>user\n<IMG_CONTEXT>\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                   "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n")


def test_phi3_and_an_explicit_system_prompt():
    out = render("phi3-chat", "default", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert out == "<|system|>\nBe brief.<|end|><|user|>\nHi<|end|><|assistant|>\n"


def test_list_content_items():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    assert render("internvl2_5", messages=msgs) == "<|im_start|>user\n<IMG_CONTEXT>\nWhat?<|im_end|>\n<|im_start|>assistant\n"
