"""vicuna_sft.compat: the version-dependent calls, under each supported release's API (issue 16).
The oldest-pins job (make test-oldest: transformers 5.17, accelerate 1.15) runs these too."""

from __future__ import annotations

import inspect

import pytest
from transformers import TrainingArguments

from vicuna_sft.compat import transformers as tf_compat
from vicuna_sft.errors import UserError


def test_the_checkpointing_flag_is_a_field_of_this_transformers():
    names = set(inspect.signature(TrainingArguments).parameters)
    assert tf_compat.checkpointing_argument() in names
    # the newer name wins where both exist (5.24+: gradient_checkpointing warns as deprecated)
    assert ("activation_checkpointing" in names) == (
        tf_compat.checkpointing_argument() == "activation_checkpointing"
    )


class _Tokenizer:
    """A tokenizer of a transformers release without `sanitize_control_tokens` (< 5.20): the
    keyword would vanish into **kwargs."""

    all_special_tokens = ("<s>", "</s>")

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, conversation, tokenize=False, return_dict=False, **kwargs):
        self.calls.append(kwargs)
        return {"input_ids": [1, 2, 3]}


class _NewTokenizer(_Tokenizer):
    def apply_chat_template(
        self, conversation, tokenize=False, return_dict=False, sanitize_control_tokens=False, **kwargs
    ):
        self.calls.append({"sanitize_control_tokens": sanitize_control_tokens, **kwargs})
        return {"input_ids": [1, 2, 3]}


def test_special_token_text_is_kept_as_text_or_refused():
    new = _NewTokenizer()
    assert tf_compat.chat_template_ids(new, [{"role": "user", "content": "say </s>"}]) == [1, 2, 3]
    assert new.calls == [{"sanitize_control_tokens": True}]

    old = _Tokenizer()
    assert tf_compat.chat_template_ids(
        old, [{"role": "user", "content": "hello"}], add_generation_prompt=True
    ) == [1, 2, 3]
    assert old.calls == [{"add_generation_prompt": True}]  # nothing it would silently drop
    with pytest.raises(UserError, match=r"user message contains the special token text '</s>'.*>= 5.20"):
        tf_compat.chat_template_ids(old, [{"role": "user", "content": "say </s>"}])
