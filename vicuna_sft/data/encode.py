"""Conversation -> (input_ids, labels), with labels built by construction.

FastChat re-tokenizes prompt pieces and subtracts hard-coded offsets to find the replies, and
silently zeroes a sample when its count is off. Here each segment (see conversation.py) is
tokenized once with character offsets; the reply is the segment's tail, so its tokens are exactly
those ending after the reply's first character. The template's `</s>` is inserted as the EOS id,
while special-token text typed inside a message is tokenized as plain text.

The ids equal what the tokenizer gives for the whole prompt text. The one context effect of
splitting at the template's EOS is the SentencePiece-style prefix space that Metaspace adds only
at the very start of a text (`prepend_scheme="first"`): continuation segments are therefore
tokenized with a copy whose prefix is off. `Encoder.__init__` checks the equality on a probe
conversation and refuses a tokenizer for which it does not hold.

Long conversations (`LongMode`): `truncate` cuts the ids at max_length. `split` cuts at turn
boundaries instead: because continuation segments are tokenized without context, a piece made of
turns i..j-1 is exactly the encoding of the conversation (system, turns[i:j]), whose first segment
(system prompt + turn i) is tokenized afresh. Pieces are filled greedily; only a single turn pair
that alone exceeds max_length is truncated (and its lost reply tokens counted).
"""

import json
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from ..config import LongMode
from .conversation import ASSISTANT, SEP, USER, Conversation, render, segments

IGNORE_INDEX = -100  # labels ignored by the loss


@dataclass
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    lost_tokens: int = 0  # trained tokens (reply + EOS) cut off by truncation
    turns: tuple[int, int] = (0, 0)  # the conversation's turn pairs [start, end) this sample holds

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _backend_copy(tokenizer: Any, continuation: bool) -> Tokenizer:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["post_processor"] = None  # BOS is added here explicitly; also keeps offsets untrimmed

    def no_first_prefix(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
                node["prepend_scheme"] = "never"
            for v in node.values():
                no_first_prefix(v)
        elif isinstance(node, list):
            for v in node:
                no_first_prefix(v)

    if continuation:
        no_first_prefix(spec.get("pre_tokenizer"))
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.encode_special_tokens = True  # "</s>" typed in a message stays text
    backend.no_truncation()
    backend.no_padding()
    return backend


class Encoder:
    """Encodes conversations for one tokenizer. Picklable (for `datasets.map(num_proc=...)`)."""

    def __init__(self, tokenizer: Any, max_length: int, long: LongMode = LongMode.truncate):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to close assistant replies with")
        self.max_length = max_length
        self.long = LongMode(long)
        self.eos_id = tokenizer.eos_token_id
        self.eos_text = tokenizer.eos_token
        with_special = tokenizer("a").input_ids
        plain = tokenizer("a", add_special_tokens=False).input_ids
        self.prefix = with_special[: len(with_special) - len(plain)]  # usually [BOS]
        self._first = _backend_copy(tokenizer, continuation=False)
        self._rest = _backend_copy(tokenizer, continuation=True)
        self._check(tokenizer)

    def _check(self, tokenizer: Any) -> None:
        probe = Conversation(
            "probe", "System  says hi.", (("Hello! How are you?", "Fine, thanks.\n"), (" Code:", "`x = 1`  "))
        )
        expected = tokenizer(render(probe, self.eos_text)).input_ids
        got = self._encode_untruncated([probe])[0][0]
        if got != expected:
            raise ValueError(
                f"{type(tokenizer).__name__} ({tokenizer.name_or_path}): segment-wise encoding differs from "
                f"whole-text tokenization ({got[:12]}... vs {expected[:12]}...); this tokenizer is not supported"
            )

    def encode(self, conv: Conversation) -> Encoded:
        """The whole conversation as one sample, truncated at max_length (whatever `long` says)."""
        return self.encode_batch([conv])[0]

    def encode_batch(self, convs: list[Conversation]) -> list[Encoded]:
        n = self.max_length
        return [
            Encoded(c.id, ids[:n], labels[:n], len(ids) > n, _trained(labels[n:]), (0, len(c.turns)))
            for c, (ids, labels) in zip(convs, self._encode_untruncated(convs))
        ]

    def samples(self, convs: list[Conversation]) -> list[list[Encoded]]:
        """The samples of each conversation under `long`: one (truncated) or several (split)."""
        if self.long == LongMode.truncate:
            return [[e] for e in self.encode_batch(convs)]
        return [self.split(c, segs) for c, segs in zip(convs, self._segment_tokens(convs))]

    def split(
        self, conv: Conversation, segs: list[tuple[list[int], list[int]]] | None = None
    ) -> list[Encoded]:
        """Pieces of at most max_length tokens, cut at turn boundaries, each starting with the
        system prompt. `segs`: the conversation's segment tokens, when already computed."""
        segs = segs or self._segment_tokens([conv])[0]
        n, pieces, start = self.max_length, [], 0
        while start < len(segs):
            # the first segment of a piece carries the prefix and the system prompt
            ids, labels = (
                segs[0]
                if start == 0
                else self._tokens(Conversation(conv.id, conv.system, conv.turns[start : start + 1]))
            )
            end = start + 1
            while end < len(segs) and len(ids) + len(segs[end][0]) <= n:
                ids, labels = ids + segs[end][0], labels + segs[end][1]
                end += 1
            pieces.append(
                Encoded(conv.id, ids[:n], labels[:n], len(ids) > n, _trained(labels[n:]), (start, end))
            )
            start = end
        if len(pieces) > 1:
            for k, p in enumerate(pieces):
                p.id = f"{conv.id}_{k}"  # FastChat's naming of split pieces
        return pieces

    def _tokens(self, conv: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a whole conversation, untruncated."""
        return self._encode_untruncated([conv])[0]

    def _encode_untruncated(self, convs: list[Conversation]) -> list[tuple[list[int], list[int]]]:
        out = []
        for segs in self._segment_tokens(convs):
            ids, labels = [], []
            for seg_ids, seg_labels in segs:
                ids += seg_ids
                labels += seg_labels
            out.append((ids, labels))
        return out

    def _segment_tokens(self, convs: list[Conversation]) -> list[list[tuple[list[int], list[int]]]]:
        """Per conversation, per segment: (ids, labels), the first with the prefix (BOS), each
        closed by the EOS id. Concatenated they are the conversation's encoding."""
        segs = [segments(c) for c in convs]
        firsts = self._first.encode_batch([s[0].text for s in segs], add_special_tokens=False)
        rest_texts = [seg.text for s in segs for seg in s[1:]]
        rests = (
            iter(self._rest.encode_batch(rest_texts, add_special_tokens=False)) if rest_texts else iter(())
        )
        out = []
        for conv_segs, first in zip(segs, firsts):
            conv_out = []
            for k, seg in enumerate(conv_segs):
                enc = first if k == 0 else next(rests)
                # tokens ending after the reply's first character are the reply (it runs to the end)
                n_prompt = next(
                    (i for i, (_, end) in enumerate(enc.offsets) if end > seg.reply_start), len(enc.ids)
                )
                head = list(self.prefix) if k == 0 else []
                ids = [*head, *enc.ids, self.eos_id]
                labels = [IGNORE_INDEX] * (len(head) + n_prompt) + enc.ids[n_prompt:] + [self.eos_id]
                conv_out.append((ids, labels))
            out.append(conv_out)
        return out

    def encode_prompt(self, system: str, history: list[tuple[str, str]], user: str) -> list[int]:
        """The ids a model trained on these encodings is given to answer `user` after `history`:
        the training encoding of the finished turns, then `USER: {user} ASSISTANT:` tokenized as a
        segment is (for generation: the chat command)."""
        ids = list(self.prefix)
        done = segments(Conversation("prompt", system, tuple(history))) if history else []
        for k, seg in enumerate(done):
            backend = self._first if k == 0 else self._rest
            ids += [*backend.encode(seg.text, add_special_tokens=False).ids, self.eos_id]
        head = ("" if history else system + SEP) + f"{USER}: {user}{SEP}{ASSISTANT}:"
        backend = self._rest if history else self._first
        return ids + backend.encode(head, add_special_tokens=False).ids


def _trained(labels: list[int]) -> int:
    return sum(1 for t in labels if t != IGNORE_INDEX)
