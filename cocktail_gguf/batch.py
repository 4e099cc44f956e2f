"""Several (context, query) pairs in one llama context: each a sequence with its own plan, decoded together.

`Llama.ask_batch` is the entry point. Sequence s gets BOS + context + query at positions 0.., its own plan
(planned for its own query) and its own sampler. The prompts are prefilled one sequence after the other;
each is sampled from its prefill's logits and compacted right after it, so its F16 staging cells are free
for the next prompt. Then every step decodes one token of each unfinished sequence in a single batch:
each token attends to its sequence's Q2/Q4/F16 regions plus its own cells of llama.cpp's cache (the mask
keeps sequences apart). With greedy sampling the answers equal those of `ask` one pair at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp

from . import segmented_cache
from .plan import Plan

if TYPE_CHECKING:
    from .llama import Answer, Llama


def _fill(
    batch: Any, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], logits: list[bool]
) -> None:
    b = batch.batch
    for i, (tok, pos, seq, out) in enumerate(zip(tokens, positions, seqs, logits, strict=True)):
        b.token[i] = tok
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = out
    b.n_tokens = len(tokens)


def _decode(
    llm: Llama, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], logits: list[bool]
) -> None:
    _fill(llm._batch, tokens, positions, seqs, logits)
    llm._ctx.decode(llm._batch)


def ask_batch_tokens(
    llm: Llama,
    context_ids: Sequence[Sequence[int]],
    query_ids: Sequence[Sequence[int]],
    plans: Sequence[Plan | None] | None,
    query_texts: Sequence[str] | None,
    *,
    mode: str | None = None,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    stop: str | Sequence[str] | None = None,
    ignore_eos: bool = False,
) -> list[Answer]:
    """`Llama.ask_batch_tokens` (the defaults are `Llama.ask_stream`'s)."""
    from .llama import KV_MODES, Answer, _first_stop, _stop_completed

    llm._check_open()
    n = len(context_ids)
    if n == 0 or len(query_ids) != n:
        raise ValueError(
            f"{n} contexts and {len(query_ids)} queries: give one query per context (at least one)"
        )
    if n > llm.n_seq_max:
        raise ValueError(f"{n} (context, query) pairs but this Llama has n_seq_max={llm.n_seq_max}")
    if n > llm.n_batch:  # a decode step holds one token per pair
        raise ValueError(f"{n} (context, query) pairs but this Llama has n_batch={llm.n_batch}")
    plans = [None] * n if plans is None else list(plans)
    if len(plans) != n:
        raise ValueError(f"{len(plans)} plans for {n} contexts")
    mode = llm.kv_mode if mode is None else mode
    if not isinstance(mode, str) or mode not in KV_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(KV_MODES)}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens={max_tokens!r} must be a non-negative integer")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise ValueError(f"stop={stop!r} must be a string or a sequence of strings")
    for i, q in enumerate(query_ids):
        if not q:
            raise ValueError(f"query {i} has no tokens")
    if mode != "f16":
        llm._check_segmented_supported()
    prefix = [llm.token_bos()] if llm._model.add_bos_token() else []
    prompts = [
        prefix + [int(t) for t in c] + [int(t) for t in q]
        for c, q in zip(context_ids, query_ids, strict=True)
    ]
    texts = (
        list(query_texts)
        if query_texts is not None
        else [llm.detokenize(list(q)).decode("utf-8", errors="replace") for q in query_ids]
    )

    t0 = time.perf_counter()
    plans = [llm._plan_for([int(t) for t in c], texts[i], plans[i], mode) for i, c in enumerate(context_ids)]
    # cells llama.cpp's cache must hold: a prompt while it is prefilled, the tails of those before it
    tails = [
        len(p) - (pl.n_chunks * pl.chunk_size if pl is not None else 0)
        for p, pl in zip(prompts, plans, strict=True)
    ]
    peak = max(sum(tails[:s]) + len(prompts[s]) for s in range(n))
    need = max(peak, sum(tails) + n * max_tokens)
    if need > llm.n_ctx():
        raise ValueError(
            f"the {n} prompts need {need} cells of llama.cpp's cache (prefill and {max_tokens} tokens each), "
            f"more than n_ctx={llm.n_ctx()}"
        )
    llm._clear_cache()
    samplers = [
        llm._init_sampler(
            top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature, repeat_penalty=repeat_penalty
        )
        for _ in range(n)
    ]
    t1 = time.perf_counter()
    next_token: list[int] = []
    compaction_s = 0.0
    ctx = llm._ctx.ctx
    for s, (prompt, plan) in enumerate(zip(prompts, plans, strict=True)):
        if plan is not None:
            segmented_cache.set_plan(ctx, plan, pos0=len(prefix), seq_id=s)
            llm._segmented_active = True
        for start in range(0, len(prompt), llm.n_batch):
            piece = prompt[start : start + llm.n_batch]
            last = start + len(piece) == len(prompt)
            _decode(
                llm,
                piece,
                range(start, start + len(piece)),
                [s] * len(piece),
                [False] * (len(piece) - 1) + [last],
            )
        next_token.append(int(samplers[s].sample(llm._ctx, -1)))
        if plan is not None:
            c0 = time.perf_counter()
            segmented_cache.compact(ctx, seq_id=s)
            compaction_s += time.perf_counter() - c0
    llm.n_tokens = 0  # llama-cpp-python's prefix bookkeeping knows one sequence: never reuse this cache
    llm._cocktail_plan = None
    t2 = time.perf_counter()
    if llm._segmented_active and llm.release_staging:
        llm._resize_kv(segmented_cache.kv_cells(ctx).used + n * max_tokens)
    t3 = time.perf_counter()

    vocab = llm._model.vocab
    outs: list[list[int]] = [[] for _ in range(n)]
    done = [max_tokens == 0] * n
    positions = [len(p) for p in prompts]
    n_decoded = 0
    while True:
        for s in range(n):
            if done[s]:
                continue
            tok = next_token[s]
            if not ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, tok):
                done[s] = True
                continue
            outs[s].append(tok)
            if len(outs[s]) >= max_tokens:
                done[s] = True
            elif stops:
                done[s] = _stop_completed(llm.detokenize, outs[s], stops)
        active = [s for s in range(n) if not done[s]]
        if not active:
            break
        _decode(
            llm, [next_token[s] for s in active], [positions[s] for s in active], active, [True] * len(active)
        )
        n_decoded += 1
        for j, s in enumerate(active):
            positions[s] += 1
            next_token[s] = int(samplers[s].sample(llm._ctx, j))
    t4 = time.perf_counter()
    if llm._segmented_active:
        segmented_cache.check(ctx)
    timings = {
        "plan_s": t1 - t0,
        "prefill_s": t2 - t1 - compaction_s,
        "compaction_s": compaction_s,
        "release_s": t3 - t2,
        "decode_s": t4 - t3,
        "n_decoded": float(n_decoded),
    }
    answers = []
    for s in range(n):
        text = llm.detokenize(outs[s]).decode("utf-8", errors="replace")
        cut = _first_stop(text, stops)
        answers.append(
            Answer(
                text=text if cut < 0 else text[:cut],
                tokens=outs[s],
                plan=plans[s],
                n_prompt_tokens=len(prompts[s]),
                timings=dict(timings),
            )
        )
    return answers
