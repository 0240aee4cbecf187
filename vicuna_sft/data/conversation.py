"""The Vicuna v1.1 prompt (FastChat's `vicuna_v1.1` template), rendered as text segments.

    "{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>"

The prompt is kept as *segments*: segment k is the text between the template's k-th and (k+1)-th
`</s>`, and it always ends with assistant reply k. The template's `</s>` is a control token
(EOS); a `</s>` typed inside a message is text. Keeping the two apart here means the encoder never
has to guess which is which.
"""

from dataclasses import dataclass

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"
SEP = " "  # after the system prompt and after each user message
EOS_TEXT = "</s>"  # FastChat's sep2, closing each assistant reply


@dataclass(frozen=True)
class Conversation:
    id: str
    system: str
    turns: tuple[tuple[str, str], ...]  # (user message, assistant reply), at least one


@dataclass(frozen=True)
class Segment:
    text: str
    reply_start: int  # the reply is text[reply_start:], the segment is followed by EOS


def segments(conv: Conversation) -> list[Segment]:
    out = []
    for k, (user, reply) in enumerate(conv.turns):
        head = (conv.system + SEP if k == 0 else "") + f"{USER}: {user}{SEP}{ASSISTANT}: "
        out.append(Segment(head + reply, len(head)))
    return out


def render(conv: Conversation, eos: str = EOS_TEXT) -> str:
    """The full training prompt as text (without BOS), exactly as FastChat writes it."""
    return "".join(s.text + eos for s in segments(conv))


# The same prompt as a Jinja chat template, saved with the final tokenizer so that
# `apply_chat_template(messages, add_generation_prompt=True)` reproduces the training text.
# Written without newlines between tags: transformers compiles templates with trim_blocks.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{{ bos_token }}{{ system }}{{ ' ' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Vicuna template: roles must be user/assistant after an optional system') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
