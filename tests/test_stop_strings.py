"""Stop strings during generation (`ask`, `ask_stream`, `ask_batch`): `_stop_completed` looks at a tail of the
tokens only, and must agree with a check of the whole text after every appended token."""

from __future__ import annotations

import random

import pytest

from cocktail_gguf.llama import _first_stop, _stop_completed

# pieces of a toy vocabulary: empty ones, multi-byte characters, a character split over two tokens, a leading
# space that the detokenizer drops at the start of a text (as SentencePiece's does)
PIECES = [b"", b"a", b"b", b" x", b"yz", b"\xc3\xa9", b"\xe2\x82", b"\xac", b"STOP", b"ST", b"OP"]
PIECES += [b"\n", b" "]


def _detokenize(tokens: list[int]) -> bytes:
    text = b"".join(PIECES[t] for t in tokens)
    return text[1:] if text.startswith(b" ") else text


@pytest.mark.parametrize("seed", range(40))
def test_tail_check_equals_whole_text_check(seed: int) -> None:
    rng = random.Random(seed)
    stops = rng.choice([["STOP"], ["yz b"], ["€a", "\n\n"], ["é", "x"], ["a" * 9], [""]])
    tokens: list[int] = []
    for _ in range(rng.randint(1, 120)):
        tokens.append(rng.randrange(len(PIECES)))
        whole = _first_stop(_detokenize(tokens).decode("utf-8", errors="replace"), stops) >= 0
        assert _stop_completed(_detokenize, tokens, stops) == whole, (stops, tokens)
        if whole:  # generation stops at the first token that completes a stop string
            break


def test_only_a_tail_is_detokenized() -> None:
    seen: list[int] = []

    def counting(tokens: list[int]) -> bytes:
        seen.append(len(tokens))
        return _detokenize(tokens)

    tokens = [1] * 5000
    assert not _stop_completed(counting, tokens, ["STOP"])
    assert max(seen) < 100  # not the 5 000 tokens
