"""`python -m vicuna_sft.chat PATH [options]`: talk to a trained model in the terminal.

PATH is a run's `final/` directory (or the run directory holding it: its `final/`, else the
`final_adapter/` an adapter run saves), or an adapter directory saved by PEFT (`adapter_config.json`; loaded with `AutoPeftModelForCausalLM` on top of the base
model it names). The prompt is built by the chat template saved with the tokenizer
(`apply_chat_template(history, add_generation_prompt=True)`), i.e. the prompt format the model was
trained on; the tokens of a message are always text, so a typed `</s>` stays text as in training.
Replies stream token by token; the conversation keeps its history until `/reset`.

    /reset   forget the conversation (the system prompt stays)
    /exit    quit (also /quit, Ctrl-D)

`--prompt TEXT` answers once on stdout and exits (for scripts). `--show-prompt` prints, on stderr,
the exact text the template renders before each reply (what the model is given, BOS included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
COMMANDS_HELP = "/reset clears the history, /exit quits (or Ctrl-D)"


class ChatError(UserError):
    pass


# ---------------------------------------------------------------------------------------------
# locating and loading


@dataclass(frozen=True)
class ModelDir:
    path: str  # the directory to load
    adapter: bool  # a PEFT adapter directory (loaded on top of its base model)
    note: str | None = None  # how PATH was understood, when it was not the model directory itself


def locate(path: str) -> ModelDir:
    """The model or adapter directory PATH names; a one-line ChatError when it names none."""
    from .files import recover_dir

    p = os.path.expanduser(path)
    for d in (p, os.path.join(p, "final"), os.path.join(p, "final_adapter")):
        recover_dir(d)  # a save killed between its two renames leaves the old directory whole aside
    if not os.path.exists(p):
        raise ChatError(f"{path}: no such directory (give a run's final/ or an adapter directory)")
    if not os.path.isdir(p):
        raise ChatError(f"{path}: not a directory (give a run's final/ or an adapter directory)")
    if os.path.isfile(os.path.join(p, ADAPTER_CONFIG)):
        return ModelDir(p, adapter=True)
    if os.path.isfile(os.path.join(p, MODEL_CONFIG)):
        return ModelDir(p, adapter=False)
    # a run directory: its merged model, else the adapter an adapter run saves beside it
    for sub, config, adapter in (("final", MODEL_CONFIG, False), ("final_adapter", ADAPTER_CONFIG, True)):
        inner = os.path.join(p, sub)
        if os.path.isfile(os.path.join(inner, config)):
            return ModelDir(inner, adapter=adapter, note=f"{path} is a run directory: chatting with {inner}")
    raise ChatError(
        f"{path}: not a model directory (no {MODEL_CONFIG} or {ADAPTER_CONFIG}); "
        "give a run's final/ or an adapter directory"
    )


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ChatError(
            f"--device cuda: no CUDA device is visible (torch {torch.__version__}); use --device cpu"
        )
    return requested


def load_tokenizer(md: ModelDir) -> Any:
    from transformers import AutoTokenizer

    source = md.path
    if md.adapter and not os.path.isfile(os.path.join(md.path, "tokenizer_config.json")):
        source = adapter_base(md.path)  # an adapter saved without its tokenizer: the base model's
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ChatError(f"{source}: cannot load the tokenizer: {first_line(e)}") from None
    if not tok.chat_template:
        raise ChatError(
            f"{source}: the tokenizer has no chat template, so the training prompt cannot be rebuilt "
            "(vicuna_sft saves it in final/; set tokenizer.chat_template and save_pretrained)"
        )
    return tok


def adapter_base(path: str) -> str:
    with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ChatError(f"{os.path.join(path, ADAPTER_CONFIG)}: no base_model_name_or_path")
    return base


def load_model(md: ModelDir, device: str, dtype: str) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no weight-loading bars in the conversation

    kwargs = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    try:
        if md.adapter:
            try:
                from peft import AutoPeftModelForCausalLM
            except ImportError:
                raise ChatError(f"{md.path} is a PEFT adapter: install peft (pip install peft)") from None
            model = AutoPeftModelForCausalLM.from_pretrained(md.path, **kwargs)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(md.path, **kwargs)
    except (OSError, ValueError) as e:
        raise ChatError(f"{md.path}: cannot load the model: {first_line(e)}") from None
    return model.to(device).eval()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def context_length(model: Any) -> int | None:
    """Positions the model was trained for (x the linear RoPE factor training may have set)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    rope = getattr(config, "rope_parameters", None) or {}
    if positions and rope.get("rope_type") == "linear":
        positions = int(positions * float(rope.get("factor", 1.0)))
    return positions


# ---------------------------------------------------------------------------------------------
# the conversation


def build_messages(system: str | None, history: list[tuple[str, str]], user: str) -> list[dict[str, str]]:
    """Chat messages for the template; without `system` the template's own (Vicuna's) is used."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    for u, a in history:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return [*messages, {"role": "user", "content": user}]


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text the saved template renders up to the assistant's turn (BOS included, as a string)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@dataclass
class Prompter:
    """A turn's prompt: its text and its ids, through the chat template saved with the tokenizer
    (the one training rendered with), tokenized as training tokenized it: the ids training gave
    that prefix, which are also `apply_chat_template(tokenize=True)`'s (tests/unit/test_templates.py).
    Special-token text typed in a message stays text."""

    tokenizer: Any

    def __post_init__(self) -> None:
        from .data.encode import Encoder
        from .data.templates import TOKENIZER, resolve

        self.encoder = Encoder(self.tokenizer, resolve(TOKENIZER, self.tokenizer), max_length=1 << 30)

    def text(self, system: str | None, history: list[tuple[str, str]], user: str) -> str:
        return prompt_text(self.tokenizer, build_messages(system, history, user))

    def ids(self, system: str | None, history: list[tuple[str, str]], user: str) -> list[int]:
        return self.encoder.prompt_ids(build_messages(system, history, user))

    def stop_ids(self) -> int | list[int]:
        """Generation stops at EOS and at the template's end-of-turn token."""
        from .training.final import stop_ids

        return stop_ids(self.tokenizer.eos_token_id, self.encoder.eot_id)


@dataclass
class Sampling:
    temperature: float = 0.7  # FastChat's CLI default; 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    # > 1 makes every token already in the prompt or reply less likely (CTRL's penalty, as
    # FastChat's CLI offers); 1.0 = off, FastChat's default
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        penalty = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, **penalty}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": 0,  # only top-p filters (generation_config may carry a top_k)
            "max_new_tokens": self.max_new_tokens,
            **penalty,
        }


def make_streamer(tokenizer: Any, out: TextIO) -> Any:
    """A TextStreamer writing the reply to `out` as tokens arrive, without the leading space the
    prompt's `ASSISTANT:` leaves to the first token, ending with a newline."""
    from transformers import TextStreamer

    class ReplyStreamer(TextStreamer):
        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return ReplyStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class Chat:
    tokenizer: Any
    model: Any
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    show_prompt: bool = False
    label: str = ""  # written before each reply ("ASSISTANT: " in the interactive chat)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    history: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompter = Prompter(self.tokenizer)

    def reset(self) -> None:
        self.history.clear()

    def fit(self, user: str) -> list[int]:
        """This turn's prompt ids, after dropping the oldest turns if the prompt plus the reply
        would not fit the model's context."""
        limit = context_length(self.model)
        while True:
            ids = self.prompter.ids(self.system, self.history, user)
            if limit is None or len(ids) + self.sampling.max_new_tokens <= limit or not self.history:
                break
            self.history.pop(0)
            self.err.write(f"(dropped the oldest turn: the model's context is {limit} tokens)\n")
        if limit is not None and len(ids) >= limit:
            raise ChatError(
                f"the message is too long: {len(ids)} prompt tokens, the model's context is {limit}"
            )
        return ids

    def respond(self, user: str) -> str:
        """Stream the reply to `out`, remember the turn, return the reply."""
        import torch

        ids = self.fit(user)
        if self.show_prompt:
            text = self.prompter.text(self.system, self.history, user)
            self.err.write(f"--- prompt ({len(ids)} tokens) ---\n{text}\n--- end of prompt ---\n")
            self.err.flush()
        self.out.write(self.label)
        self.out.flush()
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        eos = self.prompter.stop_ids()
        kwargs = self.sampling.generate_kwargs()
        limit = context_length(self.model)
        if limit is not None:  # never generate past the positions the model has
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit - len(ids))
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=make_streamer(self.tokenizer, self.out),
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id,
                **kwargs,
            )
        reply = self.tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True).strip()
        self.history.append((user, reply))
        return reply


def interact(chat: Chat, read: Any = input) -> int:
    """The read-reply loop; returns the exit status."""
    out = chat.out
    while True:
        try:
            line = read("USER: ")
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            return 130
        text = line.strip()
        if not text:
            continue
        if line.startswith("/"):  # a command; a message may start with " /"
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                chat.reset()
                out.write("(history cleared)\n")
            else:
                out.write(
                    f"(unknown command {text}: {COMMANDS_HELP}; start a message with a space to send it)\n"
                )
            continue
        try:
            chat.respond(text)
        except KeyboardInterrupt:
            out.write("\n(interrupted: this turn is not kept)\n")
        except ChatError as e:
            out.write(f"(error: {e})\n")
        out.flush()


# ---------------------------------------------------------------------------------------------
# the command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vicuna_sft.chat",
        description="Chat with a model trained by vicuna_sft, in its training prompt (the saved chat "
        f"template). In the chat: {COMMANDS_HELP}.",
        epilog="Examples:\n  python -m vicuna_sft.chat outputs/smoke/final\n"
        '  python -m vicuna_sft.chat outputs/smoke/final --prompt "What is 2 plus 2?" --temperature 0',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "path", help="a run's final/ directory (or the run directory), or a PEFT adapter directory"
    )
    p.add_argument("--system", help="system prompt (default: the template's, Vicuna's)")
    p.add_argument("--prompt", help="answer this one message on stdout and exit")
    p.add_argument(
        "--temperature", type=float, default=Sampling.temperature, help="0 = greedy (default %(default)s)"
    )
    p.add_argument(
        "--top-p", type=float, default=Sampling.top_p, help="nucleus sampling (default %(default)s)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=Sampling.max_new_tokens, help="(default %(default)s)"
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=Sampling.repetition_penalty,
        help="> 1 discourages repeating tokens already seen (default %(default)s: off)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if visible")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights dtype (auto: as saved)",
    )
    p.add_argument("--seed", type=int, help="seed the sampling (reproducible replies)")
    p.add_argument(
        "--show-prompt", action="store_true", help="print the rendered prompt (stderr) before each reply"
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.temperature < 0:
        raise ChatError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ChatError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.max_new_tokens < 1:
        raise ChatError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 < args.repetition_penalty < float("inf"):
        raise ChatError(
            f"--repetition-penalty must be > 0 and finite (1 = off), got {args.repetition_penalty}"
        )
    if args.prompt is not None and not args.prompt.strip():
        raise ChatError("--prompt is empty")


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    md = locate(args.path)  # before any heavy import: a wrong path answers at once
    if md.note:
        print(md.note, file=sys.stderr)
    device = pick_device(args.device)
    tokenizer = load_tokenizer(md)
    model = load_model(md, device, args.dtype)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.repetition_penalty)
    chat = Chat(tokenizer, model, args.system, sampling, args.show_prompt)
    if args.prompt is not None:
        chat.respond(args.prompt.strip())
        return 0
    chat.label = "ASSISTANT: "
    kind = "adapter" if md.adapter else "model"
    print(f"vicuna_sft.chat: {md.path} ({kind}, {device}, {model.dtype}); {COMMANDS_HELP}", file=sys.stderr)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    return interact(chat)


def main() -> None:
    """Console script `vicuna-sft-chat` and `python -m vicuna_sft.chat`."""
    try:
        sys.exit(run())
    except UserError as e:
        print(f"vicuna_sft.chat: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
