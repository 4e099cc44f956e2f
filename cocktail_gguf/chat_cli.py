"""`cocktail-gguf chat`: an interactive chat on stdin/stdout with the Cocktail KV cache.

Each user line is one turn; the model's answer streams as it is generated. With kv_mode other than
"f16" the last user turn is the query and the conversation before it the context that the planner
cuts into F16 / Q4 / Q2 chunks (`Llama.create_chat_completion`). Lines starting with "/" are
commands: /plan, /reset, /quit, /help. End of input (EOF, Ctrl-D) ends the chat.

`add_parser(subparsers)` registers the command; cli.py lists it in `_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

COMMANDS = {
    "/plan": "the plan of the last answer (chunk precisions of the context)",
    "/reset": "forget the conversation (the system prompt stays)",
    "/quit": "end the chat (as does end of input)",
    "/help": "this list",
}


@dataclass
class ChatSession:
    """The conversation so far and the model answering it."""

    llm: Any
    system: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _completion_kwargs(self, user: str, stream: bool) -> dict[str, Any]:
        return {
            "messages": [*self.messages, {"role": "user", "content": user}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stream": stream,
        }

    def stream(self, user: str) -> Iterator[str]:
        """Yields the answer's text pieces as they are generated; the turn joins the history once the
        answer is complete (a failed or interrupted turn leaves the history as it was)."""
        chunks = self.llm.create_chat_completion(**self._completion_kwargs(user, stream=True))
        pieces = []
        for chunk in chunks:
            piece = chunk["choices"][0].get("delta", {}).get("content") if chunk["choices"] else None
            if piece:
                pieces.append(piece)
                yield piece
        self._remember(user, "".join(pieces))

    def answer(self, user: str) -> dict[str, Any]:
        """The whole answer to one user turn: llama-cpp-python's chat completion dict."""
        response: dict[str, Any] = self.llm.create_chat_completion(
            **self._completion_kwargs(user, stream=False)
        )
        self._remember(user, response["choices"][0]["message"].get("content") or "")
        return response

    def _remember(self, user: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    def plan_summary(self) -> str:
        if self.llm.kv_mode == "f16":
            return "no plan: kv_mode=f16 keeps llama.cpp's own cache"
        plan = self.llm.cocktail_plan
        if plan is None:
            return "no plan yet: it is made with the first answer"
        return str(plan.summary())


def _emit_json(out: TextIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data, ensure_ascii=False) + "\n")
    out.flush()


def _read_line(inp: TextIO, interactive: bool) -> str | None:
    """The next input line without its newline, None at end of input."""
    if interactive:
        try:
            return input("> ")  # line editing when the readline module is loaded
        except EOFError:
            return None
    line = inp.readline()
    return None if line == "" else line.rstrip("\r\n")


def _run_command(session: ChatSession, command: str, as_json: bool, out: TextIO, err: TextIO) -> None:
    """/reset, /plan, /help (/quit is the caller's)."""
    if command == "/reset":
        session.reset()
        if as_json:
            _emit_json(out, {"command": "reset"})
        else:
            print("(conversation cleared)", file=out, flush=True)
    elif command == "/plan":
        if as_json:
            plan = session.llm.cocktail_plan
            data = None if plan is None else plan.to_dict(include_texts=False)
            _emit_json(out, {"command": "plan", "summary": session.plan_summary(), "plan": data})
        else:
            print(session.plan_summary(), file=out, flush=True)
    elif command == "/help":
        for name, what in COMMANDS.items():
            print(f"{name:<7} {what}", file=out)
        out.flush()
    else:
        print(f"unknown command {command!r}: one of {', '.join(COMMANDS)}", file=err, flush=True)


def _answer_turn(session: ChatSession, turn: int, text: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        response = session.answer(text)
        choice = response["choices"][0]
        answer = {
            "turn": turn,
            "content": choice["message"].get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "usage": response.get("usage"),
            "cocktail": response.get("cocktail"),
        }
        _emit_json(out, answer)
        return
    printed = False
    try:
        for piece in session.stream(text):
            out.write(piece)
            out.flush()
            printed = True
    except BaseException:  # an error or Ctrl-C: end a started line, print no empty one
        if printed:
            out.write("\n")
            out.flush()
        raise
    out.write("\n")  # one line per answer, an empty answer included
    out.flush()


def run_chat(session: ChatSession, as_json: bool, inp: TextIO, out: TextIO, err: TextIO) -> int:
    """Reads turns and commands from ``inp`` until /quit or end of input; 0 when it ends normally."""
    interactive = inp.isatty() and out.isatty() and not as_json
    if interactive:
        try:
            import readline  # noqa: F401  (gives input() line editing and history)
        except ImportError:  # pragma: no cover - not on every platform
            pass
        print(f"chat with {session.llm.model_path} (kv_mode={session.llm.kv_mode}); /help", file=err)
    turn = 0
    while True:
        line = _read_line(inp, interactive)
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0]
            if command == "/quit":
                return 0
            _run_command(session, command, as_json, out, err)
            continue
        turn += 1
        try:
            _answer_turn(session, turn, text, as_json, out)
        except ValueError as exc:  # e.g. the conversation no longer fits n_ctx
            print(f"cocktail-gguf chat: {exc} (/reset starts over)", file=err, flush=True)


def _cmd_chat(args: argparse.Namespace) -> int:
    from .cli import llama_from_args
    from .models import default_model_path

    model = args.model or str(default_model_path())
    try:
        llm = llama_from_args(args, model, args.n_ctx)
    except (ValueError, RuntimeError) as exc:  # a bad option value, a model that cannot be loaded
        print(f"cocktail-gguf chat: {exc}", file=sys.stderr)
        return 2
    session = ChatSession(
        llm, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    try:
        return run_chat(session, args.json, sys.stdin, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    finally:
        llm.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers the `chat` subcommand."""
    from .cli import add_llama_options
    from .planner_cli import _positive_int

    p = sub.add_parser(
        "chat",
        help="interactive chat (one user turn per stdin line), answers streamed",
        description="Chat with a GGUF model, one user turn per input line; the answer streams as it is "
        "generated. With --kv-mode other than f16 the last user turn is the query and the conversation "
        "before it the context, planned into F16/Q4/Q2 chunks. Commands: "
        + ", ".join(f"{name} ({what})" for name, what in COMMANDS.items()),
    )
    add_llama_options(p)
    p.add_argument("--n-ctx", type=_positive_int, default=4096, help="context window in tokens")
    p.add_argument("--max-tokens", "-n", type=_positive_int, default=256, help="per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature > 0)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--json", action="store_true", help="one JSON object per answer instead of streamed text")
    p.set_defaults(func=_cmd_chat)
