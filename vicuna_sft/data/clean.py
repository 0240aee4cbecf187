"""Cleaning a raw ShareGPT export (FastChat's `clean_sharegpt`, done with a real HTML converter).

The export holds the assistant replies as ChatGPT's rendered HTML: `<p>`, nested `<ol>/<ul>`,
tables, and code blocks whose header carries the language and a "Copy code" button
(`<pre><div><div><span>python</span><button><svg/>Copy code</button></div><div><code
class="language-python">...`). User messages are text, often prefixed by the "1 / 2" regenerate
counter; the browser extension appended "Copy1 chars / 1 words" to some.

HTML (in assistant messages only) becomes markdown through `markdownify` with two converters of our own: code blocks become
one fenced block with their language (button, icon and header dropped) and text is not
backslash-escaped (training text must stay what was written). The regenerate counter is removed
only at the start of a message and only glued to the text or alone on its line, so "3 / 4 is
0.75" stays. Records whose messages
are empty after cleaning, whose roles do not alternate, or which repeat an earlier conversation
are dropped and counted by reason.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from markdownify import MarkdownConverter

from .records import ASSISTANT_ROLES, RecordError, check_values, to_conversation

HTML_TAG = re.compile(
    r"<(div|p|pre|code|ol|ul|li|span|table|br|h[1-6]|strong|em|b|i|a|blockquote|hr)\b[^>]*>", re.I
)
# "2 / 3" glued to the message ("2 / 3Write a poem") or on a line of its own, with n <= m
REGENERATE_COUNTER = re.compile(r"^\s*(\d+) / (\d+)(?:(?=[^\s\d/])|[ \t]*\n)")
COPY_CHARS = re.compile(r"\s*Copy\s*\d+\s*chars\s*/\s*\d+\s*words\s*")
# older exports rendered code as text: "```pythonCopy code\n..." ; the language may be empty
INLINE_COPY_CODE = re.compile(r"```[ \t]*([\w+#.-]*)[ \t]*Copy code[ \t]*\n?")


class ShareGPTMarkdown(MarkdownConverter):
    """markdownify with ChatGPT's code blocks and without markdown escaping."""

    def __init__(self, **options: Any):
        options = {
            "heading_style": "ATX",
            "bullets": "-",
            "escape_asterisks": False,
            "escape_underscores": False,
            "escape_misc": False,
            **options,
        }
        super().__init__(**options)

    def convert_pre(self, el: Any, text: str, parent_tags: set) -> str:
        code = el.find("code")
        lang = ""
        if code is not None:
            lang = next(
                (c[len("language-") :] for c in code.get("class", []) if c.startswith("language-")), ""
            )
        if not lang:  # the header's language label, e.g. <span>python</span> next to the button
            label = el.find("span")
            lang = (
                label.get_text(strip=True) if label is not None and label.find_parent("code") is None else ""
            )
        body = (code if code is not None else el).get_text()
        if code is None:
            body = body.replace("Copy code", "", 1)
        return f"\n\n```{lang}\n{body.strip(chr(10))}\n```\n\n"

    def convert_button(self, el: Any, text: str, parent_tags: set) -> str:
        return ""

    def convert_svg(self, el: Any, text: str, parent_tags: set) -> str:
        return ""


_converter = ShareGPTMarkdown()


def to_markdown(value: str, html: bool = True) -> str:
    """One message: HTML (if any, and `html`) to markdown, export artefacts removed, outer
    whitespace stripped. User messages are exported as text: `html=False` keeps a "<div>" a user
    typed as it is."""
    if html and HTML_TAG.search(value):
        value = _converter.convert(value)
    value = INLINE_COPY_CODE.sub(lambda m: f"```{m.group(1)}\n", value)
    counter = REGENERATE_COUNTER.match(value)
    if counter and 1 <= int(counter.group(1)) <= int(counter.group(2)):
        value = value[counter.end() :]
    value = COPY_CHARS.sub("\n", value)
    value = re.sub(r"\n{3,}", "\n\n", value)
    return value.strip()


@dataclass
class CleanStats:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> records
    converted_html: int = 0  # messages converted from HTML

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "converted_html": self.converted_html,
        }


def clean_records(
    records: list[Any], source: str, drop_words: tuple[str, ...] = ()
) -> tuple[list[dict], CleanStats]:
    """Cleaned records (same ids and roles, values as markdown), duplicates and bad records dropped."""
    stats = CleanStats()
    seen: set[tuple] = set()
    out = []
    words = [w.lower() for w in drop_words]
    for index, record in enumerate(records):
        stats.read += 1
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            stats.dropped["wrong_format"] += 1
            continue
        try:
            check_values(record, source=source, index=index)  # what OUT could not be written with
        except RecordError as e:
            stats.dropped[e.reason] += 1
            continue
        messages = []
        try:
            for m in record["conversations"]:
                if isinstance(m, dict) and isinstance(m.get("value"), str):
                    role = m.get("from")
                    html = (
                        isinstance(role, str)
                        and role in ASSISTANT_ROLES
                        and bool(HTML_TAG.search(m["value"]))
                    )
                    m = {**m, "value": to_markdown(m["value"], html)}
                    stats.converted_html += html
                messages.append(m)
        except RecursionError:  # HTML nested thousands of tags deep: the converter recurses per tag
            stats.dropped["html_too_deep"] += 1
            continue
        cleaned = {**record, "conversations": messages}
        try:
            to_conversation(cleaned, source=source, index=index)
        except RecordError as e:
            stats.dropped[e.reason] += 1
            continue
        if words and any(w in m["value"].lower() for m in messages for w in words):
            stats.dropped["drop_word"] += 1
            continue
        fingerprint = tuple((m.get("from"), m["value"]) for m in messages)
        if fingerprint in seen:
            stats.dropped["duplicate"] += 1
            continue
        seen.add(fingerprint)
        out.append(cleaned)
    stats.kept = len(out)
    return out, stats
