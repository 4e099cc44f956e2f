"""Long-context tasks generated from a seed over real prose (RULER-style needles, passkey, variable
tracking, a question over one of several documents). Each sample is a context, a completion-style
query that ends where the answer starts, the bare question the planner embeds, and the answers."""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .corpus import sentences

TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "vartrack", "qa")
"""Scoring: passkey / niah_single / niah_multikey: the answer appears in the output (0 or 1);
niah_multivalue / vartrack: fraction of the answers that appear; qa: token F1 (exact match kept too)."""

CountTokens = Callable[[str], int]

_WORDS = (
    "apple", "harbor", "violin", "meadow", "copper", "lantern", "falcon", "glacier", "orchid", "saddle",
    "marble", "thimble", "canyon", "quartz", "willow", "ember", "pepper", "tundra", "beacon", "nectar",
    "walrus", "juniper", "compass", "biscuit", "cobalt", "parsley", "raven", "summit", "velvet", "anchor",
)  # fmt: skip
_FIRST = (
    "Marta",
    "Oskar",
    "Leila",
    "Tomas",
    "Ines",
    "Bruno",
    "Yara",
    "Felix",
    "Nadia",
    "Hugo",
    "Alma",
    "Iker",
)
_LAST = (
    "Kowal",
    "Brandt",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Quispe",
    "Novak",
    "Haddad",
    "Ferreira",
)
_CITIES = (
    "Riverton",
    "Ashford",
    "Port Elwin",
    "Dunmere",
    "Calloway",
    "Brightwater",
    "Oakhollow",
    "Saltmarsh",
)
_JOBS = ("glassblower", "beekeeper", "cartographer", "locksmith", "violin maker", "ferry captain", "potter")
_PETS = ("a grey parrot", "two tortoises", "a one-eyed cat", "a sheepdog", "a goldfish", "a pet ferret")


# The pass-key test's wording (Mohtashami & Jaggi 2023), also used by `cocktail-gguf demo`.
PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."


@dataclass(frozen=True)
class Sample:
    task: str
    index: int
    context: str
    query: str
    """Appended right after the context; ends where the model's answer starts."""
    question: str
    """What the planner embeds as the query."""
    answers: tuple[str, ...]
    max_tokens: int
    depths: tuple[float, ...]
    """Where the needles sit, as fractions of the context."""


def _haystack(
    rng: random.Random,
    corpus: Sequence[str],
    n_tokens: int,
    count_tokens: CountTokens,
    needles: Sequence[tuple[float, str]],
    intro: str = "",
) -> str:
    """Prose from a random point of the corpus with the needles inserted between sentences at their
    depths; about ``n_tokens`` tokens in all (never more)."""
    doc = sentences(corpus[rng.randrange(len(corpus))])
    start = rng.randrange(len(doc))
    pool = [doc[(start + i) % len(doc)] for i in range(len(doc))]
    extra = count_tokens(intro + " ".join(n for _, n in needles))

    def build(k: int) -> str:
        filler = list(pool[:k])
        for depth, needle in sorted(needles, key=lambda x: x[0], reverse=True):
            filler.insert(round(depth * len(filler)), needle)
        return intro + " ".join(filler)

    probe = pool[:400]
    per_sentence = count_tokens(" ".join(probe)) / len(probe)
    k = max(1, int((n_tokens - extra) / per_sentence))
    if k > len(pool):
        raise ValueError(
            f"a corpus document has only {len(pool)} sentences (~{int(len(pool) * per_sentence)} tokens): "
            f"too short for a {n_tokens}-token haystack; give longer corpus files"
        )
    for _ in range(4):  # converge on the sentence count from the measured tokens
        got = count_tokens(build(k))
        if got > n_tokens:
            k = max(1, k * n_tokens // got - 1)
        elif n_tokens - got > 64 and k < len(pool):
            k = min(len(pool), k + max(1, (n_tokens - got) * k // max(1, got - extra)))
        else:
            break
    while k > 1 and count_tokens(build(k)) > n_tokens:
        k -= max(1, k // 50)
    return build(k)


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _depths(rng: random.Random, n: int) -> list[float]:
    return sorted(rng.uniform(0.02, 0.98) for _ in range(n))


def passkey(
    rng: random.Random, corpus: Sequence[str], n_tokens: int, count: CountTokens, index: int
) -> Sample:
    key = _number(rng, 5)
    depth = rng.uniform(0.02, 0.98)
    intro = PASSKEY_INTRO
    needle = PASSKEY_NEEDLE.format(key=key)
    context = _haystack(rng, corpus, n_tokens, count, [(depth, needle)], intro)
    return Sample(
        "passkey", index, context, "\nWhat is the pass key? The pass key is", "What is the pass key?",
        (key,), 8, (depth,),
    )  # fmt: skip


def _magic(word: str, value: str) -> str:
    return f"One of the special magic numbers for {word} is: {value}."


def niah(
    task: str, rng: random.Random, corpus: Sequence[str], n_tokens: int, count: CountTokens, index: int
) -> Sample:
    """niah_single: one needle; niah_multikey: 4 needles with different keys, one asked;
    niah_multivalue: 4 values for one key, all asked."""
    words = rng.sample(_WORDS, 4)
    if task == "niah_multivalue":
        values = [_number(rng, 7) for _ in range(4)]
        needles = [_magic(words[0], v) for v in values]
        answers = tuple(values)
    else:
        n = 1 if task == "niah_single" else 4
        values = [_number(rng, 7) for _ in range(n)]
        needles = [_magic(w, v) for w, v in zip(words, values, strict=False)]
        answers = (values[0],)
    order = list(range(len(needles)))
    rng.shuffle(order)
    depths = _depths(rng, len(needles))
    placed = [(depths[i], needles[j]) for i, j in enumerate(order)]
    intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n"
    context = _haystack(rng, corpus, n_tokens, count, placed, intro)
    word = words[0]
    if task == "niah_multivalue":
        question = f"What are all the special magic numbers for {word} mentioned in the provided text?"
        query = f"\n{question} The special magic numbers for {word} mentioned in the provided text are"
        max_tokens = 40
    else:
        question = f"What is the special magic number for {word} mentioned in the provided text?"
        query = f"\n{question} The special magic number for {word} mentioned in the provided text is"
        max_tokens = 12
    asked = tuple(depths[i] for i, j in enumerate(order) if task == "niah_multivalue" or j == 0)
    return Sample(task, index, context, query, question, answers, max_tokens, asked)


def vartrack(
    rng: random.Random, corpus: Sequence[str], n_tokens: int, count: CountTokens, index: int
) -> Sample:
    """A chain VAR A = v, VAR B = VAR A, ... (5 names) spread through the text; which names hold v?"""
    names: list[str] = []
    while len(names) < 5:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = _number(rng, 5)
    lines = [f"VAR {names[0]} = {value}."] + [
        f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:], strict=False)
    ]
    depths = _depths(rng, len(lines))
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
    context = _haystack(rng, corpus, n_tokens, count, list(zip(depths, lines, strict=True)), intro)
    question = f"Find all variables that are assigned the value {value} in the text above."
    query = (
        f"\nQuestion: {question} Answer: According to the chain(s) of variable assignment in the text above, "
        f"{len(names)} variables are assigned the value {value}, they are:"
    )
    return Sample("vartrack", index, context, query, question, tuple(names), 30, tuple(depths))


def qa(rng: random.Random, corpus: Sequence[str], n_tokens: int, count: CountTokens, index: int) -> Sample:
    """Five short documents about invented people in the prose; a question about one of them."""
    people = rng.sample([f"{f} {last}" for f in _FIRST for last in _LAST], 5)
    cities = rng.sample(_CITIES, 5)
    docs = []
    for i, (person, city) in enumerate(zip(people, cities, strict=True)):
        job, pet, year = rng.choice(_JOBS), rng.choice(_PETS), rng.randrange(1931, 1999)
        docs.append(
            f"Document {i + 1}. {person} is a {job} who lives in {city}. "
            f"{person.split()[0]} was born in {year} and keeps {pet}."
        )
    order = list(range(5))
    rng.shuffle(order)
    depths = _depths(rng, 5)
    asked = rng.randrange(5)
    context = _haystack(rng, corpus, n_tokens, count, [(depths[k], docs[j]) for k, j in enumerate(order)])
    person = people[asked]
    question = f"In which city does {person} live?"
    query = f"\nQuestion: {question}\nAnswer: {person} lives in"
    depth = depths[order.index(asked)]
    return Sample("qa", index, context, query, question, (cities[asked],), 8, (depth,))


def make_samples(
    task: str,
    n: int,
    n_tokens: int,
    corpus: Sequence[str],
    count_tokens: CountTokens,
    seed: int = 0,
    start: int = 0,
) -> list[Sample]:
    """Samples ``start`` .. ``start + n - 1`` of ``task`` with ~``n_tokens``-token contexts; each is fixed by
    (seed, task, n_tokens, index), so a later run with another ``start`` adds new samples to earlier ones."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} samples: need a positive integer")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 256:
        raise ValueError(f"n_tokens={n_tokens!r}: contexts need at least 256 tokens")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start={start!r}: need a non-negative integer")
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"{seed}/{task}/{n_tokens}/{i}")
        if task == "passkey":
            out.append(passkey(rng, corpus, n_tokens, count_tokens, i))
        elif task.startswith("niah"):
            out.append(niah(task, rng, corpus, n_tokens, count_tokens, i))
        elif task == "vartrack":
            out.append(vartrack(rng, corpus, n_tokens, count_tokens, i))
        else:
            out.append(qa(rng, corpus, n_tokens, count_tokens, i))
    return out
