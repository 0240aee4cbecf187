"""A conversation as chat templates see it: OpenAI/HF-style messages, each assistant message
marked trained or not.

    Conversation("id", (Message("system", "..."), Message("user", "Hi"), Message("assistant", "Hello")))

Both record formats (ShareGPT `conversations` and OpenAI `messages`, records.py) become this; the
template (templates.py) renders it and the encoder (encode.py) labels what it rendered.
"""

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    train: bool = False  # in the loss (assistant messages only)
    # what templates read beside content: tool_calls, reasoning_content, name, tool_call_id
    extra: dict[str, Any] = field(default_factory=dict)

    def for_template(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, **self.extra}


@dataclass(frozen=True)
class Conversation:
    id: str
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI tool schemas, passed to the template

    @classmethod
    def of(cls, id: str, system: str | None, turns: tuple[tuple[str, str], ...]) -> "Conversation":
        """(user, assistant) pairs after an optional system prompt, every reply trained."""
        msgs = [Message("system", system)] if system is not None else []
        for user, reply in turns:
            msgs += [Message("user", user), Message("assistant", reply, train=True)]
        return cls(id, tuple(msgs))

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(user, assistant) contents of a plain alternating conversation (ShareGPT's shape)."""
        body = [m for m in self.messages if m.role != "system"]
        return tuple((u.content, a.content) for u, a in zip(body[0::2], body[1::2]))

    @property
    def turns(self) -> list[tuple[int, int]]:
        """[start, end) message ranges of the turns: each starts at a user message (the system
        message belongs to the first) and runs to the next user message."""
        starts = [i for i, m in enumerate(self.messages) if m.role == "user"] or [0]
        starts[0] = 0
        return list(zip(starts, [*starts[1:], len(self.messages)]))

    def sub(self, start: int, end: int, suffix: str = "") -> "Conversation":
        """Messages [start, end), after the system message when start > 0."""
        head = (self.messages[0],) if start > 0 and self.system is not None else ()
        return Conversation(self.id + suffix, head + self.messages[start:end], self.tools)

    def to_json(self) -> str:
        return json.dumps(
            {
                "messages": [[m.role, m.content, m.train, m.extra] for m in self.messages],
                "tools": self.tools,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, id: str, text: str) -> "Conversation":
        d = json.loads(text)
        tools = tuple(d["tools"]) if d["tools"] is not None else None
        return cls(id, tuple(Message(r, c, t, e) for r, c, t, e in d["messages"]), tools)
