"""Chat templates of the InternVL families, as Jinja text for a processor's ``chat_template``.

Native ``-hf`` checkpoints ship their own template and the workbench uses it unchanged. These are
for what the project writes itself: the tiny model, and (later) checkpoints converted from the
original format, whose template lived in Python code (``conversation.py``) rather than in a file.

The conversation renders each user turn to a string itself (``<IMG_CONTEXT>`` where an image goes,
``<video>`` where a video goes), so the templates mostly see string content; list content is
accepted too, for people who call ``processor.apply_chat_template`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

# The system prompts InternVL's own chat code sets (the model introducing itself in Chinese).
INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass(frozen=True)
class TemplateStyle:
    """How one family frames a turn: ``{open(role)}{content}{close}{sep}``."""

    name: str
    role_open: str  # with {role} in it
    close: str  # end-of-turn marker; also the stop string
    sep: str  # what follows the end-of-turn marker

    def open(self, role: str) -> str:
        return self.role_open.format(role=role)


STYLES = {
    # InternLM2-chat and Hermes-2 (ChatML with no newline between turns).
    "internlm2-chat": TemplateStyle("internlm2-chat", "<|im_start|>{role}\n", "<|im_end|>", ""),
    "Hermes-2": TemplateStyle("Hermes-2", "<|im_start|>{role}\n", "<|im_end|>", ""),
    # InternVL2.5 / 3: ChatML with a newline after each end-of-turn marker.
    "internvl2_5": TemplateStyle("internvl2_5", "<|im_start|>{role}\n", "<|im_end|>", "\n"),
    "phi3-chat": TemplateStyle("phi3-chat", "<|{role}|>\n", "<|end|>", ""),
}


def chat_template(style_name: str, default_system: str | None) -> str:
    """Jinja chat template for a family style, with its default system prompt (None: no system turn
    unless the conversation supplies one)."""
    style = STYLES[style_name]
    user_open, asst_open, sys_open = (style.open(r) for r in ("user", "assistant", "system"))
    default_block = ""
    if default_system:
        default_block = "{{- '" + sys_open + _jinja_escape(default_system) + style.close + style.sep + "' -}}"
    # Jinja's whitespace control keeps the template free of stray newlines.
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{- '" + _jinja_escape(sys_open) + "' + messages[0]['content'] + '" + _jinja_escape(style.close + style.sep) + "' -}}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}" + default_block + "{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{- '" + _jinja_escape(user_open) + "' -}}"
        "{%- else -%}{{- '" + _jinja_escape(asst_open) + "' -}}{%- endif -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
        "{%- elif item['type'] == 'video' -%}{{- '<video>\\n' -}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '" + _jinja_escape(style.close + style.sep) + "' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '" + _jinja_escape(asst_open) + "' -}}{%- endif -%}"
    )


def _jinja_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
