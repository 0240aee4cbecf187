"""FastChat's Vicuna v1.1 prompt text, written out independently of the package (the reference the
encoder's output is checked against; ../shared/notes/fastchat-reference.md):

    "{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>"
"""

from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.templates import VICUNA_SYSTEM


def render(conv: Conversation, eos: str = "</s>") -> str:
    """The whole training prompt as text (without BOS), exactly as FastChat writes it."""
    system = conv.system if conv.system is not None else VICUNA_SYSTEM
    return system + " " + "".join(f"USER: {u} ASSISTANT: {a}{eos}" for u, a in conv.pairs)


def vicuna_encoder(tokenizer, max_length: int, long=None, **kwargs):
    """The package's encoder with the builtin Vicuna v1.1 template (the default data.template)."""
    from vicuna_sft.config import LongMode
    from vicuna_sft.data.encode import Encoder
    from vicuna_sft.data.templates import resolve

    return Encoder(
        tokenizer, resolve("vicuna_v1.1", tokenizer), max_length, long or LongMode.truncate, **kwargs
    )
