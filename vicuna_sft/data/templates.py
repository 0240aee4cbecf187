"""Chat templates: which Jinja text renders a conversation, and what closes an assistant turn.

`data.template` names one of:
    vicuna_v1.1   FastChat's Vicuna v1.1 prompt (the default; builtin, below)
    chatml        ChatML (`<|im_start|>role\\n...<|im_end|>`), for base models without a template
    tokenizer     the model's own `tokenizer.chat_template` (Llama-3, Qwen, Mistral, Gemma, Phi, ...)
    <path>.jinja  a template file

Every template is rendered through transformers' own Jinja environment (compat/), so the text is
what `apply_chat_template` (and vLLM/TGI, which use the same Jinja text) produce. The
end-of-turn token is not declared anywhere: it is found by rendering a probe turn and taking the
last special token the template writes after the assistant's content.
"""

from dataclasses import dataclass
from typing import Any

from ..config import TEMPLATE_NAMES
from ..errors import UserError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# FastChat's vicuna_v1.1: "{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>".
# Written without newlines between tags: transformers compiles templates with trim_blocks.
VICUNA_TEMPLATE = (
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

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BUILTIN = {"vicuna_v1.1": (VICUNA_TEMPLATE, ()), "chatml": (CHATML_TEMPLATE, CHATML_TOKENS)}
TOKENIZER = "tokenizer"
assert set(TEMPLATE_NAMES) == {*BUILTIN, TOKENIZER}


class TemplateError(UserError, ValueError):
    """A template that cannot be trained on: the message names it and what is wrong."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # as configured: a builtin name, "tokenizer" or the file's path
    source: str  # the Jinja text
    tokens: tuple[str, ...] = ()  # special tokens the template writes that a tokenizer may lack

    def reads(self, field: str) -> bool:
        """Whether the template can render a message or call field (tool_calls, reasoning_content,
        tools): a conversation using one it never reads would lose it silently."""
        return field in self.source


def resolve(value: str, tokenizer: Any) -> ChatTemplate:
    if value in BUILTIN:
        source, tokens = BUILTIN[value]
        return ChatTemplate(value, source, tokens)
    if value == TOKENIZER:
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one
            source = source.get("default")
        if not source:
            raise TemplateError(
                f"data.template=tokenizer: the tokenizer of {tokenizer.name_or_path} has no chat template; "
                f"use data.template={'|'.join(BUILTIN)} or a .jinja file"
            )
        return ChatTemplate(value, source)
    try:
        with open(value, encoding="utf-8") as f:
            return ChatTemplate(value, f.read())
    except OSError as e:
        raise TemplateError(f"data.template: cannot read {value}: {e.strerror}") from None


def add_missing_tokens(tokenizer: Any, template: ChatTemplate) -> list[str]:
    """Adds the special tokens a builtin template writes that the tokenizer lacks (ChatML's on a
    base model); returns them. The model's embeddings must then grow to `len(tokenizer)`."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.tokens if t not in vocab]
    if missing:
        from tokenizers import AddedToken

        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    return missing
