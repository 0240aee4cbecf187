"""Reading ShareGPT and OpenAI-messages files and turning records into `Conversation`s, with
errors that say where.

Every problem names the file, the record index (and id) and what is wrong. Under
`on_error=skip` a bad record is counted by reason instead of aborting the run; nothing is dropped
without being counted.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import TrainOn
from ..errors import UserError
from .conversation import Conversation, Message

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}
SYSTEM_ROLES = {"system"}
INVALID_JSON = "invalid_json"  # skip reason of a malformed JSONL line


class DataError(UserError, ValueError):
    """Bad input data; the message is meant for the user as is."""


class RecordError(DataError):
    def __init__(self, source: str, index: int, record_id: Any, reason: str, detail: str):
        self.reason = reason  # short key used for counting skips, e.g. "unknown_role"
        where = f"record {index}" + (f" (id={record_id!r})" if record_id is not None else "")
        super().__init__(f"{source}: {where}: {detail}")


@dataclass
class Stats:
    """What happened to the records of one file; printed and saved with every run."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> records not trained on
    adjusted: Counter = field(default_factory=Counter)  # reason -> records kept after a fix-up
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "adjusted": dict(self.adjusted),
            "truncated": self.truncated,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


def read_records(path: str, *, skip_errors: bool = False) -> tuple[list[Any], int]:
    """A JSON array, or JSON Lines (`.jsonl`, or any file not starting with `[`).

    Returns the records and the number of malformed JSONL lines skipped (only when `skip_errors`;
    a broken JSON array is never skipped: nothing after the error could be trusted).
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file (give a .json or .jsonl file)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    # utf-8-sig: a BOM written by some editors/exporters is not part of the JSON
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if path.endswith(".jsonl") or not text.lstrip().startswith("["):
        records, invalid = [], 0
        # split on "\n" only: str.splitlines() also splits on U+2028, U+0085, ... which JSON
        # allows raw inside strings
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if not skip_errors:
                    raise DataError(
                        f"{path}: invalid JSON on line {lineno} column {e.colno}: {e.msg}"
                    ) from None
                invalid += 1
        return records, invalid
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    return records, 0


def to_conversation(
    record: Any, *, source: str, index: int, system: str | None = None, train_on: TrainOn = TrainOn.all
) -> tuple[Conversation, list[str]]:
    """Validate one record: ShareGPT (`conversations` of `from`/`value`) or OpenAI/HF `messages`
    (`role`/`content`, with `tool_calls`, `reasoning_content`, `"train": false`), told apart per
    record. Returns the conversation and the fix-ups applied to it. `system`: the system prompt of
    a record without its own (its source's; None: the template's)."""
    rid = record.get("id") if isinstance(record, dict) else None

    def fail(reason: str, detail: str) -> RecordError:
        return RecordError(source, index, rid, reason, detail)

    if not isinstance(record, dict):
        raise fail("not_an_object", f"expected an object, got {type(record).__name__}")
    if "messages" in record:
        msgs, fixes = _openai_messages(record["messages"], fail), []
    elif "conversations" in record:
        msgs, fixes = _sharegpt_messages(record["conversations"], fail)
    else:
        raise fail("no_conversations", "missing the 'conversations' (ShareGPT) or 'messages' (OpenAI) field")
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise fail("bad_tools", "'tools' must be a list of objects (tool schemas)")

    for i, m in enumerate(msgs):
        if m.role == "system" and i > 0:
            raise fail("misplaced_system", f"message {i}: a system message is only allowed first")
    if system is not None and not (msgs and msgs[0].role == "system"):
        msgs.insert(0, Message("system", system))
    while msgs and msgs[-1].role != "assistant":  # nothing to learn after the last reply
        msgs.pop()
        if "trailing_user_dropped" not in fixes:
            fixes.append("trailing_user_dropped")
    if train_on == TrainOn.last:
        last = max((i for i, m in enumerate(msgs) if m.train), default=-1)
        msgs = [replace(m, train=False) if i != last else m for i, m in enumerate(msgs)]
    if not any(m.train for m in msgs):
        raise fail("no_assistant_reply", "no assistant reply to train on")
    conv = Conversation(str(rid) if rid is not None else f"{source}#{index}", tuple(msgs))
    return (replace(conv, tools=tuple(tools)) if tools is not None else conv), fixes


def _sharegpt_messages(messages: Any, fail: Any) -> tuple[list[Message], list[str]]:
    if not isinstance(messages, list):
        raise fail("bad_conversations", f"'conversations' must be a list, got {type(messages).__name__}")
    if not messages:
        raise fail("empty_conversation", "'conversations' is empty")
    roles, texts = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise fail("bad_message", f"message {i} must be an object with 'from' and 'value'")
        role, value = m["from"], m["value"]
        if not isinstance(value, str):
            raise fail(
                "non_string_value", f"message {i}: 'value' must be a string, got {type(value).__name__}"
            )
        if not value.strip():
            raise fail("empty_message", f"message {i} ({role!r}) is empty")
        if role in USER_ROLES:
            roles.append("user")
        elif role in ASSISTANT_ROLES:
            roles.append("assistant")
        elif role in SYSTEM_ROLES and i == 0:
            roles.append("system")
        elif role in SYSTEM_ROLES:
            raise fail("misplaced_system", f"message {i}: a system message is only allowed first")
        else:
            known = sorted(USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES)
            raise fail("unknown_role", f"message {i}: unknown role {role!r} (expected one of {known})")
        texts.append(value)
    fixes, head = [], []
    if roles and roles[0] == "system":
        head = [Message("system", texts[0])]
        roles, texts = roles[1:], texts[1:]
    if roles and roles[0] == "assistant":  # FastChat parity: one leading assistant message is dropped
        roles, texts = roles[1:], texts[1:]
        fixes.append("leading_assistant_dropped")
    if roles and roles[-1] == "user":  # FastChat ignores the whole sample; we keep the rest
        roles, texts = roles[:-1], texts[:-1]
        fixes.append("trailing_user_dropped")
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise fail("not_alternating", f"turn {i}: expected a {expected} message, got {role}")
    if not roles:
        raise fail("no_assistant_reply", "no assistant reply to train on")
    return head + [Message(r, t, train=r == "assistant") for r, t in zip(roles, texts)], fixes


OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")  # the first is what templates read


def _text(content: Any, i: int, fail: Any) -> str:
    """A message's content: a string, or a list of text parts (OpenAI's content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise fail(
                    "non_text_content",
                    f"message {i}: only text content parts are supported, got {part!r:.60}",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise fail(
        "non_string_value",
        f"message {i}: 'content' must be a string or text parts, got {type(content).__name__}",
    )


def _tool_calls(calls: Any, i: int, fail: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls as templates read them: `function.arguments` a mapping (OpenAI sends a
    JSON string)."""
    if not isinstance(calls, list) or not calls:
        raise fail("bad_tool_calls", f"message {i}: 'tool_calls' must be a non-empty list")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise fail("bad_tool_calls", f"message {i}: each tool call needs function.name, got {call!r:.60}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise fail(
                    "bad_tool_calls", f"message {i}: tool call arguments are not JSON: {args!r:.60}"
                ) from None
        out.append({**call, "type": call.get("type", "function"), "function": {**fn, "arguments": args}})
    return out


def _openai_messages(messages: Any, fail: Any) -> list[Message]:
    if not isinstance(messages, list):
        raise fail("bad_conversations", f"'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise fail("empty_conversation", "'messages' is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise fail("bad_message", f"message {i} must be an object with 'role' and 'content'")
        role = OPENAI_ROLES.get(m["role"]) if isinstance(m["role"], str) else None
        if role is None:
            raise fail(
                "unknown_role",
                f"message {i}: unknown role {m['role']!r} (expected one of {sorted(OPENAI_ROLES)})",
            )
        content = "" if m.get("content") is None else _text(m["content"], i, fail)
        extra: dict[str, Any] = {}
        if role == "assistant" and m.get("tool_calls") is not None:
            extra["tool_calls"] = _tool_calls(m["tool_calls"], i, fail)
        reasoning = next((m[f] for f in REASONING_FIELDS if m.get(f) is not None), None)
        if reasoning is not None:
            if role != "assistant" or not isinstance(reasoning, str):
                raise fail(
                    "bad_reasoning", f"message {i}: reasoning must be a string on an assistant message"
                )
            extra["reasoning_content"] = reasoning
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                extra[key] = m[key]
        if not content.strip() and not extra.get("tool_calls"):
            raise fail("empty_message", f"message {i} ({role!r}) is empty")
        train = m.get("train", True)
        if not isinstance(train, bool):
            raise fail("bad_train_flag", f"message {i}: 'train' must be true or false, got {train!r}")
        if role != "assistant" and "train" in m:
            raise fail(
                "bad_train_flag", f"message {i}: only assistant messages can be trained ('train' on {role})"
            )
        out.append(Message(role, content, train=role == "assistant" and train, extra=extra))
    return out


def load_conversations(
    path: str, *, skip_errors: bool, system: str | None = None, train_on: TrainOn = TrainOn.all
) -> tuple[list[Conversation], Stats]:
    """All valid conversations of `path`; bad records raise, or are counted when `skip_errors`."""
    records, invalid_json = read_records(path, skip_errors=skip_errors)
    if not records and not invalid_json:
        raise DataError(f"{path}: the file holds no records")
    stats = Stats(read=invalid_json)
    if invalid_json:
        stats.dropped[INVALID_JSON] = invalid_json
    out, bad = [], []
    for index, record in enumerate(records):
        stats.read += 1
        try:
            conv, fixes = to_conversation(record, source=path, index=index, system=system, train_on=train_on)
        except RecordError as e:
            if not skip_errors:
                bad.append(e)  # every record is checked: one run reports them all, not one per run
            stats.dropped[e.reason] += 1
            continue
        stats.adjusted.update(fixes)
        out.append(conv)
    if bad:
        raise bad_records_error(path, bad)
    return out, stats


REPORTED_BAD_RECORDS = 5  # a broken export has thousands: the first few show the pattern


def bad_records_error(path: str, bad: list[RecordError]) -> DataError:
    """One error for the bad records of a file: each of the first REPORTED_BAD_RECORDS with its
    reason, how many there are by reason, and the setting that skips them."""
    skip = "fix them, or set data.on_error=skip to skip and count them"
    if len(bad) == 1:
        return DataError(f"{bad[0]}; {skip}")
    reasons = Counter(e.reason for e in bad)
    shown = "\n  ".join(str(e).removeprefix(f"{path}: ") for e in bad[:REPORTED_BAD_RECORDS])
    more = f"\n  ... and {len(bad) - REPORTED_BAD_RECORDS} more" if len(bad) > REPORTED_BAD_RECORDS else ""
    by_reason = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
    return DataError(f"{path}: {len(bad)} bad records ({by_reason}):\n  {shown}{more}\n{skip}")
