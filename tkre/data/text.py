"""Raw text with character offsets -> tokens with token spans, done once at the edge.

The word tokeniser keeps runs of letters/digits together and makes every other visible character
its own token, and records each token's character offsets, so an entity given by character offsets
maps to a token span exactly (no sub-token search, no off-by-one).
"""

from __future__ import annotations

import re

from tkre.schema import DataError, Span

_TOKEN = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


def tokenize_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split text into word tokens; return the tokens and their (start, end) character offsets."""
    tokens, offsets = [], []
    for match in _TOKEN.finditer(text):
        tokens.append(match.group())
        offsets.append(match.span())
    return tokens, offsets


def char_span_to_token_span(offsets: list[tuple[int, int]], start: int, end: int,
                             field: str = "span") -> tuple[int, int]:
    """Token indices [first, last + 1) covering characters [start, end) exactly.

    The span must begin at a token's first character and end at a token's last character:
    an offset that cuts a token in two is an error, not a silent widening.
    """
    if not 0 <= start < end:
        raise DataError(f"character span [{start}, {end}) is empty or negative", field=field)
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    if start not in starts:
        raise DataError(f"character offset {start} is not at the start of a token", field=field)
    if end not in ends:
        raise DataError(f"character offset {end} is not at the end of a token", field=field)
    first, last = starts[start], ends[end]
    if last < first:
        raise DataError(f"character span [{start}, {end}) covers no token", field=field)
    return first, last + 1


def span_from_chars(text: str, offsets: list[tuple[int, int]], tokens: list[str], start: int,
                    end: int, entity_type: str | None, field: str) -> Span:
    """A token Span for the characters text[start:end] (end exclusive)."""
    if end > len(text):
        raise DataError(f"character span [{start}, {end}) runs past the text's {len(text)} "
                        "characters", field=field)
    first, stop = char_span_to_token_span(offsets, start, end, field=field)
    return Span(first, stop, " ".join(tokens[first:stop]), entity_type)
