"""Schema-constrained checks on what the generator writes: synthetic sentences and explanations.

Small instruction models wrap their answer in prose or code fences, echo the prompt or the
demonstrations, invent relations and entity types, and break JSON. Every candidate therefore goes
through `check_candidate`, which either builds an `Instance` or names exactly one reject reason
from `REJECT_REASONS` (the generation job counts them per relation in stats.json).

Entities are located by character offsets on token boundaries and converted to token spans once
(`tkre.data.text.span_from_chars`), never by sub-token search, so a span cannot be shifted by one
token and "Ann" is never found inside "Annabel".
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, replace
from typing import Any

from tkre.data.text import span_from_chars, tokenize_with_offsets
from tkre.schema import Instance, RelationSchema, Span

ACCEPTED = "accepted"

# Stable names: stats.json is keyed by them, so renaming one breaks comparisons between runs.
REJECT_REASONS = (
    "unparseable",
    "empty_sentence",
    "wrong_relation",
    "head_type_not_allowed",
    "tail_type_not_allowed",
    "head_not_in_sentence",
    "tail_not_in_sentence",
    "entities_overlap",
    "copies_demonstration",
    "copies_prompt",
    "duplicate",
    "too_short",
    "too_long",
)

EXPLANATION_REJECT_REASONS = ("empty", "too_short", "missing_head", "missing_tail")

# The tokeniser keeps "'", "-", "." and "’" inside words; at a word's edge they are punctuation.
_PUNCT = string.punctuation + "’‘“”«»…–—"
# A first line that is chat filler rather than content ("Sure, here is the explanation:").
_PREAMBLE = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|okay|ok|here\s+is|here's|here\s+are)\b",
    re.IGNORECASE,
)
_DECODER = json.JSONDecoder(strict=False)  # strict=False: models put raw newlines in strings


@dataclass(frozen=True)
class Limits:
    """Length bounds (in words) and the token-set Jaccard at which a sentence is a near copy."""

    min_words: int = 5
    max_words: int = 60
    near_copy_jaccard: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.min_words <= self.max_words:
            raise ValueError(f"need 0 < min_words <= max_words, got {self.min_words}, "
                             f"{self.max_words}")
        if not 0.0 < self.near_copy_jaccard <= 1.0:
            raise ValueError(f"near_copy_jaccard must be in (0, 1], got {self.near_copy_jaccard}")


DEFAULT_LIMITS = Limits()


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` that parses, preferring one with a "sentence" key.

    Every "{" is tried as the start of an object, so code fences, prose before or after, trailing
    junk and several objects are all tolerated, and an object nested inside a wrapper is found.
    Returns the first dict holding "sentence", else the first dict, else None.
    """
    first: dict[str, Any] | None = None
    index = text.find("{")
    while index != -1:
        try:
            value, _ = _DECODER.raw_decode(text, index)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            if "sentence" in value:
                return value
            if first is None:
                first = value
        index = text.find("{", index + 1)
    return first


def normalize(text: str) -> str:
    """Case-folded words joined by single spaces, punctuation dropped: the key for copy checks.

    Punctuation is stripped per token (a lone "," vanishes, "Paris." becomes "paris") so that
    re-punctuated or re-spaced echoes still compare equal.
    """
    tokens, _ = tokenize_with_offsets(text.casefold())
    words = (token.strip(_PUNCT) for token in tokens)
    return " ".join(word for word in words if word)


def _words(tokens: list[str]) -> int:
    """Tokens that contain a letter or digit (punctuation does not count towards length)."""
    return sum(1 for token in tokens if any(char.isalnum() for char in token))


def _occurrences(sentence: str, entity: str, boundaries: tuple[set[int], set[int]]
                 ) -> list[tuple[int, int]]:
    """Character spans of `entity` in `sentence` that start and end on token boundaries.

    Exact-case matches come first, then the extra case-insensitive ones, each in reading order;
    a run of whitespace inside the entity matches any whitespace run. The zero-width lookahead
    reports overlapping occurrences as well, so none is skipped by a previous match.
    """
    words = entity.split()
    if not words:
        return []
    body = r"\s+".join(re.escape(word) for word in words)
    starts, ends = boundaries
    found: list[tuple[int, int]] = []
    for flags in (0, re.IGNORECASE):
        for match in re.finditer(f"(?=({body}))", sentence, flags):
            span = match.span(1)
            if span[0] in starts and span[1] in ends and span not in found:
                found.append(span)
    return found


def locate_entities(sentence: str, head: str, tail: str) -> tuple[Span, Span] | str:
    """Token spans (types None) of the head and tail strings in `sentence`, or a reject reason.

    Picks the first (head occurrence, tail occurrence) pair, head occurrences outermost, whose
    token spans do not overlap; so an entity written twice, once inside the other entity, is
    found at its free occurrence. Returns "head_not_in_sentence", "tail_not_in_sentence" or
    "entities_overlap" when no such pair exists.
    """
    tokens, offsets = tokenize_with_offsets(sentence)
    boundaries = ({s for s, _ in offsets}, {e for _, e in offsets})
    heads = _occurrences(sentence, head, boundaries)
    if not heads:
        return "head_not_in_sentence"
    tails = _occurrences(sentence, tail, boundaries)
    if not tails:
        return "tail_not_in_sentence"
    for h_start, h_end in heads:
        head_span = span_from_chars(sentence, offsets, tokens, h_start, h_end, None, "head")
        for t_start, t_end in tails:
            tail_span = span_from_chars(sentence, offsets, tokens, t_start, t_end, None, "tail")
            if head_span.end <= tail_span.start or tail_span.end <= head_span.start:
                return head_span, tail_span
    return "entities_overlap"


def _type_key(name: str) -> str:
    """Spelling-insensitive key for an entity type: case-folded, '_' as space, spaces collapsed."""
    return " ".join(name.replace("_", " ").casefold().split())


def _canonical_type(value: Any, allowed: tuple[str, ...]) -> str | None:
    """The schema's spelling of `value` when it names an allowed type, else None."""
    if not isinstance(value, str):
        return None
    by_key = {_type_key(name): name for name in allowed}
    return by_key.get(_type_key(value))


def _copies(norm: str, demo_norms: list[str], prompt_norm: str, limits: Limits) -> str | None:
    """Name the echo ("copies_demonstration" or "copies_prompt"), or None for a new sentence.

    Demonstrations first: the prompt contains them, so a verbatim demonstration would also be a
    substring of the prompt, and the more specific reason is the useful one in the stats.
    """
    words = set(norm.split())
    for demo in demo_norms:
        demo_words = set(demo.split())
        union = words | demo_words
        if norm == demo or (union and len(words & demo_words) / len(union)
                            >= limits.near_copy_jaccard):
            return "copies_demonstration"
    # Padded with spaces so the match is on whole words ("he won" is not inside "she won").
    if f" {norm} " in f" {prompt_norm} ":
        return "copies_prompt"
    return None


def _fields(obj: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """Sentence, head and tail, stripped, when all three are strings; else None."""
    if obj is None:
        return None
    values = [obj.get(key) for key in ("sentence", "head", "tail")]
    if not all(isinstance(value, str) for value in values):
        return None
    sentence, head, tail = (value.strip() for value in values)
    return sentence, head, tail


def _schema_reason(obj: dict[str, Any], schema: RelationSchema
                   ) -> tuple[str | None, str | None, str | None]:
    """(reason or None, canonical head type, canonical tail type) for the relation and types.

    A missing "relation" key means the model answered the relation it was asked for; any other
    non-matching value (including null) is a wrong relation. A side whose schema lists no types
    is not checked and gets type None.
    """
    if "relation" in obj:
        relation = obj["relation"]
        if not isinstance(relation, str) or relation.strip().casefold() != schema.name.casefold():
            return "wrong_relation", None, None
    head_type = tail_type = None
    if schema.head_types:
        head_type = _canonical_type(obj.get("head_type"), schema.head_types)
        if head_type is None:
            return "head_type_not_allowed", None, None
    if schema.tail_types:
        tail_type = _canonical_type(obj.get("tail_type"), schema.tail_types)
        if tail_type is None:
            return "tail_type_not_allowed", None, None
    return None, head_type, tail_type


def check_candidate(text: str, schema: RelationSchema, demonstrations: list[Instance],
                    prompt_text: str, seen: set[str], limits: Limits = DEFAULT_LIMITS,
                    request_id: str = "") -> tuple[Instance | None, str]:
    """Check one generated answer against the schema; (Instance, "accepted") or (None, reason).

    Checks run in this fixed order, cheapest first, and the first failure is the reason:
    unparseable -> empty_sentence -> wrong_relation -> head_type_not_allowed ->
    tail_type_not_allowed -> too_short / too_long -> copies_demonstration -> copies_prompt ->
    duplicate -> head_not_in_sentence / tail_not_in_sentence / entities_overlap.
    On acceptance the normalised sentence is added to `seen`, so a later identical candidate is a
    duplicate; rejected candidates never enter `seen`. The id is `request_id`, or a stable hash of
    the normalised sentence when none is given.
    """
    obj = extract_json_object(text)
    fields = _fields(obj)
    if obj is None or fields is None:
        return None, "unparseable"
    sentence, head, tail = fields
    if not sentence:
        return None, "empty_sentence"
    reason, head_type, tail_type = _schema_reason(obj, schema)
    if reason:
        return None, reason
    tokens, _ = tokenize_with_offsets(sentence)
    words = _words(tokens)
    if words < limits.min_words:
        return None, "too_short"
    if words > limits.max_words:
        return None, "too_long"
    norm = normalize(sentence)
    demo_norms = [normalize(" ".join(demo.tokens)) for demo in demonstrations]
    reason = _copies(norm, demo_norms, normalize(prompt_text), limits)
    if reason:
        return None, reason
    if norm in seen:
        return None, "duplicate"
    located = locate_entities(sentence, head, tail)
    if isinstance(located, str):
        return None, located
    head_span, tail_span = located
    inst = Instance(
        id=request_id or "llm-" + hashlib.sha1(norm.encode("utf-8")).hexdigest()[:16],
        tokens=tuple(tokens),
        head=replace(head_span, type=head_type),
        tail=replace(tail_span, type=tail_type),
        relation=schema.name,
        source="llm",
    )
    seen.add(norm)
    return inst, ACCEPTED


def _token_text(text: str) -> str:
    """Text re-tokenised and joined by single spaces, case-folded, for entity containment."""
    tokens, _ = tokenize_with_offsets(text)
    return " ".join(tokens).casefold()


def _explanation_reason(text: str, inst: Instance, min_words: int) -> str | None:
    """The first failing explanation check, or None when `text` (already stripped) passes."""
    if not text:
        return "empty"
    tokens, _ = tokenize_with_offsets(text)
    if _words(tokens) < min_words:
        return "too_short"
    # Space-padded so entities match whole tokens only, the same rule as for sentences.
    padded = f" {' '.join(tokens).casefold()} "
    for name, span in (("head", inst.head), ("tail", inst.tail)):
        entity = _token_text(" ".join(inst.tokens[span.start:span.end]))
        if f" {entity} " not in padded:
            return f"missing_{name}"
    return None


def explanation_spans(text: str, inst: Instance
                      ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Character spans of the instance's head and tail in an explanation, on token boundaries.

    The entities are matched as whole token sequences, case-insensitively, with the tokeniser
    `check_explanation` uses: "car" is not found inside "scarf", and SemEval's "U.S . Army"
    is found in "the U.S. Army". The first non-overlapping (head, tail) pair in reading order
    wins; None when there is none.
    """
    tokens, offsets = tokenize_with_offsets(text)
    folded = [token.casefold() for token in tokens]

    def occurrences(span: Span) -> list[tuple[int, int]]:
        words, _ = tokenize_with_offsets(" ".join(inst.tokens[span.start:span.end]))
        entity = [word.casefold() for word in words]
        width = len(entity)
        return [(i, i + width) for i in range(len(folded) - width + 1)
                if width and folded[i:i + width] == entity]

    for head_start, head_end in occurrences(inst.head):
        for tail_start, tail_end in occurrences(inst.tail):
            if head_end <= tail_start or tail_end <= head_start:
                return ((offsets[head_start][0], offsets[head_end - 1][1]),
                        (offsets[tail_start][0], offsets[tail_end - 1][1]))
    return None


def check_explanation(text: str, inst: Instance, min_words: int = 5) -> tuple[str | None, str]:
    """(cleaned text, "accepted") when the explanation is usable, else (None, reason).

    Reasons, checked in order: "empty", "too_short", "missing_head", "missing_tail". A leading
    chat preamble line ("Sure, here is the explanation:") is dropped when what follows passes on
    its own; otherwise the whole text is judged. The cleaned text has its whitespace collapsed.
    """
    text = text.strip()
    first, newline, rest = text.partition("\n")
    if newline and _PREAMBLE.match(first):
        rest = rest.strip()
        if _explanation_reason(rest, inst, min_words) is None:
            return " ".join(rest.split()), ACCEPTED
    reason = _explanation_reason(text, inst, min_words)
    if reason:
        return None, reason
    return " ".join(text.split()), ACCEPTED
