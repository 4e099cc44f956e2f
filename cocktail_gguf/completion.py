"""OpenAI-style completions on the segmented cache: `Llama.create_completion` / `create_chat_completion`
in kv_mode "cocktail" | "q4" | "q2".

Where the query comes from: in chat, the last user message (or ``cocktail_query``); everything the chat
template puts before it is the context, the message and the template's assistant header are the query.
In a plain completion, ``cocktail_query`` if given, else the prompt's last non-empty line. A prompt that is
all query (nothing before it) runs on llama.cpp's own cache: there is nothing to quantize.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .llama import Answer, Llama

# Sampling arguments llama-cpp-python accepts that the segmented path does not implement, with the value
# meaning "off": anything else raises instead of being ignored.
UNSUPPORTED_OFF: dict[str, Any] = {
    "suffix": None,
    "logprobs": None,
    "echo": False,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
    "stopping_criteria": None,
    "logits_processor": None,
    "grammar": None,
    "logit_bias": None,
}
IGNORED = (
    "mirostat_tau",
    "mirostat_eta",
    "model",
    "seed",
)  # meaningless once the above are off (seed: greedy)


def split_prompt(
    llm: Llama, prompt_ids: Sequence[int], query: str | None
) -> tuple[list[int], list[int], str]:
    """(context ids, query ids, query text to embed): the prompt cut at the token where the query's last
    occurrence starts (a leading BOS is dropped: ask_tokens puts one first)."""
    ids = [int(t) for t in prompt_ids]
    if ids[:1] == [llm.token_bos()] and llm._model.add_bos_token():
        ids = ids[1:]
    pieces = [llm.detokenize([t], special=True) for t in ids]
    text = b"".join(pieces)
    if query is None:
        lines = text.decode("utf-8", errors="replace").rstrip("\n").split("\n")
        query = next((line for line in reversed(lines) if line.strip()), None)
        if query is None:
            raise ValueError("the prompt has no text to take the query from: pass cocktail_query=")
    if not query.strip():
        raise ValueError(f"cocktail_query={query!r} is empty")
    cut = text.rfind(query.strip().encode("utf-8"))
    if cut < 0:
        raise ValueError(
            f"the query {query[:80]!r} does not occur in the prompt: pass cocktail_query= with text that the "
            "prompt contains"
        )
    start = 0
    for i, piece in enumerate(pieces):  # the token holding the query's first byte starts the query
        if start + len(piece) > cut:
            return ids[:i], ids[i:], query.strip()
        start += len(piece)
    raise AssertionError("unreachable: the cut lies inside the prompt")


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message (text parts joined), the chat's query."""
    for message in reversed(list(messages)):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str) or not content.strip():
                raise ValueError(f"the last user message has no text to use as the query: {message!r}")
            return content.strip()
    raise ValueError("messages hold no user message to take the query from: pass cocktail_query=")


def tag_last_chunk(chunks: Iterator[dict[str, Any]], info: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """The chunks, the last one with a "cocktail" entry (known once the generation is done)."""
    previous = None
    for chunk in chunks:
        if previous is not None:
            yield previous
        previous = chunk
    if previous is not None:
        yield {**previous, "cocktail": info()}


def check_sampling_args(kwargs: dict[str, Any]) -> None:
    for name, value in kwargs.items():
        if name in UNSUPPORTED_OFF:
            if value != UNSUPPORTED_OFF[name] and not (name == "stopping_criteria" and not value):
                raise ValueError(
                    f"{name}={value!r} is not supported with the segmented KV cache (kv_mode other than f16)"
                )
        elif name not in IGNORED:
            raise TypeError(f"create_completion() got an unexpected keyword argument {name!r}")


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]


def _safe_end(text: str, stops: list[str]) -> int:
    """How much of ``text`` may be streamed: not a trailing start of a stop string."""
    end = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


def plan_info(llm: Llama, answer: Answer) -> dict[str, Any]:
    """The "cocktail" entry of a response: plan summary, allocated KV bytes, phase timings."""
    plan = answer.plan
    info: dict[str, Any] = {
        "kv_mode": llm.kv_mode,
        "kv_bytes": llm.kv_bytes(),
        "timings": dict(answer.timings),
    }
    if plan is None:
        info["plan"] = None
    else:
        info["plan"] = {
            "summary": plan.summary(),
            "chunk_size": plan.chunk_size,
            "n_context_tokens": plan.n_context_tokens,
            "counts": plan.counts,
            "bits_per_element": plan.bits_per_element,
            "precisions": plan.precision_string(),
            "encoder": plan.encoder,
            "query": plan.query,
            "thresholds": plan.thresholds.to_dict() if plan.thresholds is not None else None,
        }
    return info


def create_completion(
    llm: Llama,
    prompt: str | list[int],
    *,
    cocktail_query: str | None,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    stop: str | Sequence[str] | None,
    stream: bool,
) -> dict[str, Any] | Iterator[dict[str, Any]]:
    if isinstance(prompt, str):
        prompt = list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
    context_ids, query_ids, query_text = split_prompt(llm, prompt, cocktail_query)
    n_prompt = len(context_ids) + len(query_ids) + 1
    if max_tokens is None or max_tokens <= 0:
        max_tokens = max(0, llm.n_ctx() - n_prompt)
    stops = _stop_list(stop)
    # no context before the query: nothing to quantize, llama.cpp's own cache serves it
    mode = None if context_ids else "f16"
    gen = llm.ask_stream(
        context_ids, query_ids, query_text=query_text, mode=mode, max_tokens=max_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
        stop=stops,
    )  # fmt: skip
    head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time())}
    head["model"] = llm.model_path

    def text_of(answer: Answer) -> str:
        """As llama-cpp-python: bytes that are not UTF-8 are dropped; cut at the first stop string."""
        full = llm.detokenize(answer.tokens).decode("utf-8", errors="ignore")
        cuts = [full.index(s) for s in stops if s in full]
        return full[: min(cuts)] if cuts else full

    def finish(answer: Answer) -> str:
        full = llm.detokenize(answer.tokens).decode("utf-8", errors="ignore")
        return "length" if len(answer.tokens) >= max_tokens and full == text_of(answer) else "stop"

    def usage(answer: Answer) -> dict[str, int]:
        n = len(answer.tokens)
        return {
            "prompt_tokens": answer.n_prompt_tokens,
            "completion_tokens": n,
            "total_tokens": answer.n_prompt_tokens + n,
        }

    if not stream:
        while True:
            try:
                next(gen)
            except StopIteration as done:
                answer: Answer = done.value
                break
        choice = {"text": text_of(answer), "index": 0, "logprobs": None, "finish_reason": finish(answer)}
        info = llm._last_answer_info = plan_info(llm, answer)
        return {**head, "choices": [choice], "usage": usage(answer), "cocktail": info}

    def chunks() -> Iterator[dict[str, Any]]:
        tokens: list[int] = []
        sent = 0
        while True:
            try:
                tokens.append(next(gen))
            except StopIteration as done:
                answer = done.value
                break
            text = llm.detokenize(tokens).decode("utf-8", errors="ignore")
            end = _safe_end(text, stops)
            if end > sent:
                yield {
                    **head,
                    "choices": [
                        {"text": text[sent:end], "index": 0, "logprobs": None, "finish_reason": None}
                    ],
                }
                sent = end
        final = text_of(answer)
        if final[sent:]:  # a chunk that carries a finish_reason has its text dropped by chat conversion
            yield {
                **head,
                "choices": [{"text": final[sent:], "index": 0, "logprobs": None, "finish_reason": None}],
            }
        last = {"text": "", "index": 0, "logprobs": None, "finish_reason": finish(answer)}
        info = llm._last_answer_info = plan_info(llm, answer)
        yield {**head, "choices": [last], "usage": usage(answer), "cocktail": info}

    return chunks()
