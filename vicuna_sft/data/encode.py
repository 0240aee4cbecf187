"""Conversation -> (input_ids, labels) through any chat template, labels by construction.

The ids are what a server sees: the template's rendering tokenized in one piece, exactly as
`apply_chat_template(messages, tokenize=True)` does. The labels need no `{% generation %}`
markers and no stored copy of any template. For each trained assistant message k the template is
rendered twice more:

    P_k = render(messages[:k], add_generation_prompt=True)    the prompt a server gives the model
    F_k = render(messages[:k+1])                               the same with the reply rendered

F_k starts with P_k (else the template is refused); what follows is what the model must produce:
the content as the template writes it (after `| trim`, with its tool-call and reasoning markup),
then the end-of-turn token, found once per template by rendering a probe turn (templates.py).
The trained span is F_k[len(P_k):] up to and including that token; glue after it (ChatML's "\\n")
is context. Tokens are labelled by their character offsets; a token crossing a span boundary, or
a span not ending in the end-of-turn id, fails the sample, so every sample is verified as it is
encoded.

A template is prefix-stable when each F_k is a prefix of the whole conversation's rendering; then
one sample holds every turn. Templates that rewrite earlier turns once later ones follow (Qwen3
drops earlier `<think>` blocks; Mistral moves the system prompt to the last user message) follow
`data.reasoning`: refuse (the default), split (one sample per turn as a server renders it at that
point: the inference view; tokens counted) or keep (one sample in which every turn is as it was
rendered when it was the latest).

Special-token text typed in a message ("<|im_end|>", "</s>") stays text: it is wrapped in private
markers before rendering and encoded as text, the way transformers' `sanitize_control_tokens` does.
"""

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from ..config import LongMode, Reasoning
from .conversation import Conversation, Message
from .templates import ChatTemplate, TemplateError

IGNORE_INDEX = -100  # labels ignored by the loss
_START, _END = "\U000f0000", "\U000f0001"  # markers around typed control-token text (as transformers')
PROBE = (Message("user", "Hello! How are you?"), Message("assistant", "Fine, thanks.", train=True))
ANCHORED = "anchored"  # a layout from one rendering (`Encoder._anchored`)


class ConversationError(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(detail)


@dataclass
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    lost_tokens: int = 0  # trained tokens cut off by truncation
    turns: tuple[int, int] = (0, 0)  # the conversation's turns [start, end) this sample holds
    dropped: str = ""  # why the conversation gave no sample (data.on_error=skip)
    layout: str = ""  # "split" / "keep" when data.reasoning re-laid an unstable conversation

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class _Layout:
    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # trained [start, end) in text


class Encoder:
    """Encodes conversations for one tokenizer and template. Picklable (`datasets.map(num_proc)`)."""

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate,
        max_length: int,
        long: LongMode = LongMode.truncate,
        reasoning: Reasoning = Reasoning.refuse,
        template_kwargs: dict[str, Any] | None = None,
        skip_errors: bool = False,
    ):
        self.template, self.max_length = template, max_length
        self.long, self.reasoning, self.skip_errors = LongMode(long), Reasoning(reasoning), skip_errors
        self.name = tokenizer.name_or_path
        specials = {str(t) for t in tokenizer.all_special_tokens if t}
        specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        # what transformers treats as control tokens: the special ones, and added tokens the
        # template's text writes (Qwen's <tool_call>)
        control = specials | {t for t in tokenizer.get_vocab() if t in tokenizer.added_tokens_encoder}
        control = {t for t in control if t in specials or t in template.source}
        alternation = "|".join(map(re.escape, sorted(control, key=len, reverse=True))) or "(?!)"
        self._control_re = re.compile(alternation)
        self._markers_re = re.compile(f"{_START}({alternation}){_END}|[{_START}{_END}]")
        self._specials = sorted(specials, key=len, reverse=True)
        self._kwargs = {**tokenizer.special_tokens_map, **(template_kwargs or {})}
        self._plain = _backend(tokenizer)
        self._newline = self._plain.encode("\n", add_special_tokens=False).ids
        self._header = None
        self.eot = self._find_end_of_turn()
        self.eot_id = tokenizer.convert_tokens_to_ids(self.eot)
        self._check(tokenizer)
        self._header = self._stable_header()
        self._header_ids = None
        if self._header is not None:
            ids = self._plain.encode(self._header, add_special_tokens=False).ids
            first = tokenizer.convert_ids_to_tokens(ids[0]) if ids else None
            if first in self._specials and self._header.startswith(first):
                self._header_ids = ids

    @classmethod
    def for_data(
        cls, cfg: Any, tokenizer: Any, max_length: int | None = None, long: LongMode | None = None
    ) -> "Encoder":
        """The encoder `cfg` (a DataConfig) describes, for this tokenizer."""
        from ..config import OnError
        from .templates import resolve

        return cls(
            tokenizer,
            resolve(cfg.template, tokenizer),
            cfg.max_length if max_length is None else max_length,
            cfg.long if long is None else long,
            cfg.reasoning,
            dict(cfg.template_kwargs),
            skip_errors=cfg.on_error == OnError["skip"],
        )

    # ------------------------------------------------------------------ rendering

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_compiled", "_parent")}  # rebuilt

    def _render(self, messages: list[dict[str, Any]], tools: Any, generation: bool) -> str:
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            from ..compat.transformers import compiled_chat_template

            compiled = self._compiled = compiled_chat_template(self.template.source)
            # the globals the template sees, merged once: a render then only adds its own variables
            # (what Template.render does, without rebuilding the globals' chain on every call)
            self._parent = {**compiled.globals, **self._kwargs, "documents": None}
        try:
            context = compiled.new_context(
                {**self._parent, "messages": messages, "tools": tools, "add_generation_prompt": generation},
                shared=True,
            )
            return "".join(compiled.root_render_func(context))
        except Exception as e:  # the template's raise_exception, or a field it cannot handle
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConversationError("template_error", f"the template failed: {first}") from None

    def _mark(self, obj: Any) -> Any:
        if isinstance(obj, str):
            if _START in obj or _END in obj:  # transformers would drop them silently
                raise ConversationError(
                    "reserved_character",
                    "a message holds U+F0000 or U+F0001 (reserved to mark control-token text)",
                )
            return self._control_re.sub(f"{_START}\\g<0>{_END}", obj)
        if isinstance(obj, dict):
            return {k: self._mark(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._mark(v) for v in obj]
        return obj

    def _template_messages(self, conv: Conversation) -> tuple[list[dict[str, Any]], Any]:
        plain = conv.tools is None and not any(m.extra for m in conv.messages)
        joined = "\0".join(m.content for m in conv.messages)
        if plain and not self._control_re.search(joined) and _START not in joined and _END not in joined:
            return [{"role": m.role, "content": m.content} for m in conv.messages], None
        msgs = []
        for m in conv.messages:
            d = self._mark(m.for_template())
            if "reasoning_content" in d:  # the name gpt-oss templates read, as transformers aliases it
                d = {"thinking": d["reasoning_content"], **d}
            msgs.append(d)
        return msgs, self._mark(list(conv.tools)) if conv.tools is not None else None

    def _eot_end(self, text: str, start: int) -> int:
        """The end of the first end-of-turn token the template wrote at or after `start`."""
        i = text.find(self.eot, start)
        while i >= 0 and i > 0 and text[i - 1] == _START:  # typed by a user: text
            i = text.find(self.eot, i + 1)
        return -1 if i < 0 else i + len(self.eot)

    def _turn(self, msgs: list[dict], tools: Any, k: int) -> tuple[str, int, int]:
        """(text, start, end): the prompt a server gives for assistant message k followed by the
        message as the template renders it, its trained span [start, end)."""
        prompt = self._render(msgs[:k], tools, generation=True)
        full = self._render(msgs[: k + 1], tools, generation=False)
        if full.startswith(prompt):
            start = len(prompt)
        else:
            # the prompt is rendered differently when the reply follows (Mistral v3 writes the
            # system prompt into the last user message only): the reply starts after the last
            # occurrence of the prompt's tail from its last template-written special token
            anchor = prompt[self._last_special(prompt) :]
            at = full.rfind(anchor) if anchor else -1
            if at < 0:
                raise ConversationError(
                    "generation_prompt_mismatch",
                    f"message {k}: the template's generation prompt {prompt[-24:]!r} is not how it starts the "
                    "assistant message",
                )
            full, start = prompt + full[at + len(anchor) :], len(prompt)
        end = self._eot_end(full, start)
        if end < 0:
            raise ConversationError(
                "no_end_of_turn",
                f"message {k}: the template wrote no {self.eot!r} after the assistant message",
            )
        return full, start, end

    def _anchored(self, conv: Conversation, whole: str) -> list[tuple[int, int]] | None:
        """The trained spans from one rendering, for a template found prefix-stable on the probes
        whose assistant header holds a special token (so no message text can forge one): the j-th
        header opens the j-th assistant message, its end-of-turn closes it. None: the general path."""
        starts = [i + len(self._header) for i in _find_all(whole, self._header)]
        assistants = [k for k, m in enumerate(conv.messages) if m.role == "assistant"]
        if len(starts) != len(assistants):
            return None
        spans = []
        for k, start in zip(assistants, starts):
            if conv.messages[k].train:
                end = self._eot_end(whole, start)
                if end < 0:
                    return None
                spans.append((start, end))
        return spans

    def _last_special(self, text: str) -> int:
        """Where the last template-written special token in `text` starts (0: none)."""
        best = 0
        for t in self._specials:
            i = text.rfind(t)
            if i > best and text[i - 1] != _START:
                best = i
        return best

    def _layouts(self, conv: Conversation) -> tuple[list[_Layout], str]:
        """The sample texts of a conversation with their trained spans, and the re-layout applied."""
        for k, m in enumerate(conv.messages):
            for f in ("tool_calls", "reasoning_content"):
                if f in m.extra and not self.template.reads(f):
                    raise ConversationError(
                        f"unrendered_{f}",
                        f"message {k} has {f}, which the template never renders (it would be lost)",
                    )
        if conv.tools is not None and not self.template.reads("tools"):
            raise ConversationError(
                "unrendered_tools", "the record has tools, which the template never renders"
            )
        msgs, tools = self._template_messages(conv)
        whole = self._render(msgs, tools, generation=False)
        if self._header is not None:
            spans = self._anchored(conv, whole)
            if spans is not None:
                return [_Layout(whole, spans)], ANCHORED
        turns = [self._turn(msgs, tools, k) for k, m in enumerate(conv.messages) if m.train]
        unstable = [(f, s, e) for f, s, e in turns if not whole.startswith(f[:e])]
        if not unstable:
            return [_Layout(whole, [(s, e) for _, s, e in turns])], ""
        if self.reasoning == Reasoning.refuse:
            k = [k for k, m in enumerate(conv.messages) if m.train][turns.index(unstable[0])]
            raise ConversationError(
                "template_not_prefix_stable",
                f"the template renders assistant message {k} differently once later messages follow "
                "(e.g. earlier reasoning dropped); set data.reasoning=split (one sample per turn, as served) "
                "or data.reasoning=keep (one sample, each turn as rendered when it was the latest)",
            )
        if self.reasoning == Reasoning.split:
            # from the last turn back: a sample is a turn rendered last, training every earlier turn
            # its text holds unchanged
            out, left = [], list(turns)
            while left:
                f, s, e = left.pop()
                stable = [(s2, e2) for f2, s2, e2 in left if f.startswith(f2[:e2])]
                left = [t for t in left if not f.startswith(t[0][: t[2]])]
                out.append(_Layout(f, [*stable, (s, e)]))
            return out[::-1], "split"
        # keep: each turn's text as rendered when it was the latest, joined by what the next prompt
        # adds after the history (found by counting the template's end-of-turn tokens)
        text, spans = "", []
        for j, (f, s, e) in enumerate(turns):
            if j == 0:
                text, spans = f[:e], [(s, e)]
                continue
            seen = len(_find_all(text, self.eot))
            prompt = f[:s]
            cut = 0
            for _ in range(seen):
                cut = self._eot_end(prompt, cut)
                if cut < 0:
                    raise ConversationError(
                        "template_not_prefix_stable",
                        "data.reasoning=keep: the history lost an end-of-turn token",
                    )
            text += prompt[cut:]
            spans.append((len(text), len(text) + e - s))
            text += f[s:e]
        return [_Layout(text + turns[-1][0][turns[-1][2] :], spans)], "keep"

    # ------------------------------------------------------------------ tokenizing

    def _tokenize(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        out: list[Any] = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if _START not in t and _END not in t]
        for i, enc in zip(
            plain, self._plain.encode_batch([texts[i] for i in plain], add_special_tokens=False)
        ):
            out[i] = (enc.ids, enc.offsets)
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self._tokenize_marked(t)
        return out

    def _tokenize_marked(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """As transformers' `encode_marked_chat`: the text between markers as usual, a marked token as
        plain text; every piece after the first encoded after a newline (then removed) so that
        SentencePiece adds no prefix space in the middle of the chat. Offsets stay in `text`."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []

        def piece(s: str, at: int, as_text: bool, first: bool) -> None:
            encode = self._without_added_tokens if as_text else self._with_added_tokens
            if first:
                enc, shift = encode(s), 0
            else:
                enc, shift = encode("\n" + s), 1
                if enc.ids[: len(self._newline)] != self._newline:
                    enc, shift = encode(s), 0
                else:
                    n = len(self._newline)
                    enc = _Slice(enc.ids[n:], enc.offsets[n:])
            ids.extend(enc.ids)
            offsets.extend((max(a - shift, 0) + at, max(b - shift, 0) + at) for a, b in enc.offsets)

        pos = 0
        for m in self._markers_re.finditer(text):
            if m.start() > pos or pos == 0:
                piece(text[pos : m.start()], pos, as_text=False, first=pos == 0)
            if m.group(1):
                piece(m.group(1), m.start(1), as_text=True, first=False)
            pos = m.end()
        if pos < len(text):
            piece(text[pos:], pos, as_text=False, first=False)
        return ids, offsets

    def _with_added_tokens(self, text: str) -> Any:
        return self._plain.encode(text, add_special_tokens=False)

    def _without_added_tokens(self, text: str) -> "_Slice":
        """The backend's pipeline without its added tokens (transformers' `_encode_without_added_tokens`)."""
        b = self._plain
        if b.normalizer is not None:
            text = b.normalizer.normalize_str(text)
        splits = (
            b.pre_tokenizer.pre_tokenize_str(text)
            if b.pre_tokenizer is not None
            else [(text, (0, len(text)))]
        )
        ids, offsets = [], []
        for split, (start, _) in splits:
            for token in b.model.tokenize(split):
                ids.append(token.id)
                offsets.append((start + token.offsets[0], start + token.offsets[1]))
        return _Slice(ids, offsets)

    def _labels(
        self, ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
    ) -> list[int]:
        """-100 everywhere but the tokens inside a span; a token crossing a span's start or end, or
        a span not ending in the end-of-turn id, fails the sample. Offsets are non-decreasing, so
        each span's tokens are found by bisection."""
        labels = [IGNORE_INDEX] * len(ids)
        n = len(ids)
        for a, b in spans:
            i = bisect.bisect_left(offsets, (a, a))  # first token starting at or after a
            if i > 0 and offsets[i - 1][1] > a:
                raise ConversationError("span_boundary", "a token crosses the start of an assistant span")
            j = bisect.bisect_left(offsets, (b, b), lo=i)  # first token starting at or after b
            if j > i and offsets[j - 1][1] > b:
                raise ConversationError("span_boundary", "a token crosses the end of an assistant span")
            if j == i or ids[j - 1] != self.eot_id or j > n:
                raise ConversationError("no_end_of_turn", f"an assistant span does not end in {self.eot!r}")
            labels[i:j] = ids[i:j]
        return labels

    # ------------------------------------------------------------------ samples

    def _whole(self, conv: Conversation) -> list[Encoded]:
        """The conversation's samples, untruncated (one, or several when re-laid by data.reasoning)."""
        return self._encode_all([conv])[0]

    def _encode_all(self, convs: list[Conversation]) -> list[list[Encoded] | ConversationError]:
        """Untruncated samples of each conversation, or why it cannot be encoded; the texts of all
        of them tokenized in one batch (the tokenizer's threads)."""
        laid: list[Any] = []
        for conv in convs:
            try:
                laid.append(self._layouts(conv))
            except ConversationError as e:
                laid.append(e)
        # anchored layouts without typed control text: ids without offsets, labelled by the
        # header and end-of-turn ids (`_labels_from_ids`); anything else (or what that cannot
        # label) by character offsets
        by_ids = [
            i
            for i, item in enumerate(laid)
            if not isinstance(item, ConversationError)
            and item[1] == ANCHORED
            and self._header_ids is not None
            and _START not in item[0][0].text
            and _END not in item[0][0].text
        ]
        labelled: dict[int, tuple[list[int], list[int]]] = {}
        if by_ids:
            fast = self._plain.encode_batch_fast(
                [laid[i][0][0].text for i in by_ids], add_special_tokens=False
            )
            for i, enc in zip(by_ids, fast):
                ids = enc.ids
                labels = self._labels_from_ids(ids, convs[i])
                if labels is not None:
                    labelled[i] = (ids, labels)
        texts = [
            x.text
            for i, item in enumerate(laid)
            if not isinstance(item, ConversationError) and i not in labelled
            for x in item[0]
        ]
        tokens = iter(self._tokenize(texts))
        out: list[list[Encoded] | ConversationError] = []
        for i, (conv, item) in enumerate(zip(convs, laid)):
            if isinstance(item, ConversationError):
                out.append(item)
                continue
            layouts, how = item
            how = "" if how == ANCHORED else how
            if i in labelled:
                ids, labels = labelled[i]
                out.append([Encoded(conv.id, ids, labels, turns=(0, len(conv.turns)))])
                continue
            samples, error = [], None
            for k, lay in enumerate(layouts):
                ids, offsets = next(tokens)
                try:
                    labels = self._labels(ids, offsets, lay.spans)
                except ConversationError as e:
                    error = error or e
                    continue
                sid = conv.id if len(layouts) == 1 else f"{conv.id}_t{k}"
                samples.append(Encoded(sid, ids, labels, turns=(0, len(conv.turns)), layout=how))
            out.append(error or samples)
        return out

    def _labels_from_ids(self, ids: list[int], conv: Conversation) -> list[int] | None:
        """Labels of an anchored conversation from its ids alone: the j-th run of the header's ids
        (it starts with a special token, so no text forges it) opens the j-th assistant message,
        the first end-of-turn id after it closes it. None when the runs do not match the messages
        (content merged into the header's last token, say): the offsets decide then."""
        head, n = self._header_ids, len(self._header_ids)
        starts, i = [], -1
        try:
            while True:
                i = ids.index(head[0], i + 1)
                if ids[i : i + n] == head:
                    starts.append(i + n)
        except ValueError:
            pass
        trained = [m.train for m in conv.messages if m.role == "assistant"]
        if len(starts) != len(trained):
            return None
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, train) in enumerate(zip(starts, trained)):
            if not train:
                continue
            try:
                end = ids.index(self.eot_id, start) + 1
            except ValueError:
                return None
            if j + 1 < len(starts) and end > starts[j + 1] - n:
                return None
            labels[start:end] = ids[start:end]
        return labels

    def _cut(self, e: Encoded) -> Encoded:
        n = self.max_length
        if len(e.input_ids) > n:
            e.truncated, e.lost_tokens = True, _trained(e.labels[n:])
            e.input_ids, e.labels = e.input_ids[:n], e.labels[:n]
        return e

    def samples(self, convs: list[Conversation]) -> list[list[Encoded]]:
        """The samples of each conversation under `long`; a conversation that cannot be encoded
        gives one empty sample naming why (data.on_error=skip), else raises TemplateError."""
        out = []
        for conv, whole in zip(convs, self._encode_all(convs)):
            try:
                if isinstance(whole, ConversationError):
                    raise whole
                if self.long == LongMode.split and any(len(e.input_ids) > self.max_length for e in whole):
                    whole = self.split(conv) if len(whole) == 1 else whole
                out.append([self._cut(e) for e in whole])
            except ConversationError as e:
                if not self.skip_errors:
                    raise TemplateError(
                        f"data.template={self.template.name}: conversation {conv.id}: {e.detail} "
                        "(data.on_error=skip counts such conversations instead)"
                    ) from None
                out.append([Encoded(conv.id, [], [], dropped=e.reason)])
        return out

    def encode_batch(self, convs: list[Conversation]) -> list[Encoded]:
        """One sample per conversation, truncated at max_length (whatever `long` says)."""
        out = []
        for conv, whole in zip(convs, self._encode_all(convs)):
            if isinstance(whole, ConversationError):
                raise TemplateError(
                    f"data.template={self.template.name}: conversation {conv.id}: {whole.detail}"
                )
            out.append(self._cut(whole[0]))
        return out

    def encode(self, conv: Conversation) -> Encoded:
        """The whole conversation as one sample, truncated at max_length (lazy mode: the first
        sample when data.reasoning=split lays it out as several)."""
        return self.samples([conv])[0][0]

    def split(self, conv: Conversation) -> list[Encoded]:
        """Pieces of at most max_length tokens cut at turn boundaries, each after the system
        message, each rendered afresh; greedy: a piece takes turns while it fits. A single turn
        longer than max_length is truncated (its lost trained tokens counted)."""
        turns, pieces, i = conv.turns, [], 0
        while i < len(turns):
            best, j = None, i + 1
            while j <= len(turns):
                cand = self._whole(conv.sub(turns[i][0], turns[j - 1][1]))
                if best is not None and max(len(e.input_ids) for e in cand) > self.max_length:
                    break
                best, j = cand, j + 1
            for e in best:
                e.turns = (i, j - 1)
            pieces += [self._cut(e) for e in best]
            i = j - 1
        for k, p in enumerate(pieces):
            p.id = f"{conv.id}_{k}" if len(pieces) > 1 else conv.id  # FastChat's naming of split pieces
        return pieces

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        """The ids a model trained on these encodings is given to answer after `messages` (the
        chat command; equal to `apply_chat_template(..., add_generation_prompt=True, tokenize=True)`)."""
        marked = self._mark(messages)
        return self._tokenize([self._render(marked, self._mark(tools), generation=True)])[0][0]

    # ------------------------------------------------------------------ the template itself

    def _find_end_of_turn(self) -> str:
        msgs = [m.for_template() for m in PROBE]
        where = f"data.template={self.template.name} with the tokenizer of {self.name}"
        try:
            prompt = self._render(msgs[:1], None, generation=True)
            full = self._render(msgs, None, generation=False)
        except ConversationError as e:
            raise TemplateError(f"{where}: {e.detail} on a one-turn conversation") from None
        if not full.startswith(prompt):
            raise TemplateError(
                f"{where}: its generation prompt {prompt[-24:]!r} does not start its assistant turn"
            )
        reply = full[len(prompt) :]
        ends = [(reply.rfind(t) + len(t), t) for t in self._specials if t in reply]
        if not ends or max(ends)[0] <= reply.find(PROBE[1].content):
            raise TemplateError(
                f"{where}: the template closes an assistant message with no special token ({reply!r}), so a "
                "model trained on it would never stop; use a template whose assistant turn ends in one"
            )
        return max(ends)[1]

    def _stable_header(self) -> str | None:
        """The generation prompt, when one rendering can be labelled (see `_anchored`): it holds a
        special token, and on probe conversations (system or not, several turns, reasoning and a
        tool call where the template renders them) every turn renders alike as the latest message
        and in the history, and every prompt is a prefix of the whole."""
        user = [Message("user", "Hello! How are you?")]
        try:
            bare = self._render([m.for_template() for m in user], None, generation=False)
            prompt = self._render([m.for_template() for m in user], None, generation=True)
        except ConversationError:
            return None
        header = prompt[len(bare) :] if prompt.startswith(bare) else ""
        if not any(t in header for t in self._specials):
            return None
        reply = {"reasoning_content": "Let me think."} if self.template.reads("reasoning_content") else {}
        call = {
            "type": "function",
            "function": {"name": "lookup", "arguments": {"q": "x"}},
            "id": "abcdefghi",
        }
        turns = [
            Message("user", "Hi"),
            Message("assistant", "Hello.", train=True, extra=reply),
            Message("user", "And then?"),
            Message("assistant", "Then this.", train=True),
            Message("user", "Last one"),
            Message("assistant", "Done.", train=True, extra=reply),
        ]
        probes = [
            Conversation("p", tuple(turns)),
            Conversation("p", (Message("system", "Be brief."), *turns)),
        ]
        if self.template.reads("tool_calls"):
            tool = (
                Message("user", "Look it up"),
                Message("assistant", "", train=True, extra={"tool_calls": [call]}),
                Message("tool", "found", extra={"tool_call_id": "abcdefghi", "name": "lookup"}),
                Message("assistant", "It is found.", train=True),
            )
            probes.append(Conversation("p", tool))
        for probe in probes:
            msgs = [m.for_template() for m in probe.messages]
            try:
                whole = self._render(msgs, None, generation=False)
                for k, m in enumerate(probe.messages):
                    if m.train:
                        text, start, end = self._turn(msgs, None, k)
                        if not whole.startswith(text[:end]) or whole[start - len(header) : start] != header:
                            return None
            except ConversationError:
                return None
        return header

    def _check(self, tokenizer: Any) -> None:
        """The probe encodes to what the tokenizer gives for the rendered text, its prompt to what it
        gives for the prompt alone (the token-level train/serve parity), its span to the reply."""
        where = f"data.template={self.template.name} with the tokenizer of {self.name}"
        conv = Conversation("probe", PROBE)
        (e,) = self._whole(conv)
        msgs = [m.for_template() for m in PROBE]
        text = self._render(msgs, None, generation=False)
        if e.input_ids != tokenizer(text, add_special_tokens=False).input_ids:
            raise TemplateError(f"{where}: encoding the rendered text differs from the tokenizer's own")
        prompt = tokenizer(self._render(msgs[:1], None, generation=True), add_special_tokens=False).input_ids
        if e.input_ids[: len(prompt)] != prompt or any(t != IGNORE_INDEX for t in e.labels[: len(prompt)]):
            raise TemplateError(
                f"{where}: the prompt tokenizes differently alone than followed by the reply, so a server "
                "would not give the model the ids it was trained on"
            )


class _Slice:
    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]):
        self.ids, self.offsets = ids, offsets


def _backend(tokenizer: Any) -> Tokenizer:
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _find_all(text: str, token: str) -> list[int]:
    """Where a template-written `token` occurs (not typed: not right after a start marker)."""
    out, i = [], text.find(token)
    while i >= 0:
        if i == 0 or text[i - 1] != _START:
            out.append(i)
        i = text.find(token, i + 1)
    return out


def _trained(labels: list[int]) -> int:
    return sum(1 for t in labels if t != IGNORE_INDEX)
