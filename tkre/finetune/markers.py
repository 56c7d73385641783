"""Entity markers (Zhou & Chen's typed punctuation markers) and encoding for the classifier.

typed:    @ * person * Bill Gates @ founded # ^ organization ^ Microsoft #
untyped:  @ Bill Gates @ founded # Microsoft #

The markers are ordinary punctuation, so no vocabulary is added. The classifier reads the hidden
states at the first sub-token of the two start markers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tkre.schema import Instance, Span

HEAD_MARK, HEAD_TYPE_MARK = "@", "*"
TAIL_MARK, TAIL_TYPE_MARK = "#", "^"


def _type_words(span: Span) -> list[str]:
    return (span.type or "").lower().replace("_", " ").split()


def _wrap(span_tokens: list[str], span: Span, mark: str, type_mark: str,
          typed: bool) -> list[str]:
    if typed and span.type:
        return [mark, type_mark, *_type_words(span), type_mark, *span_tokens, mark]
    return [mark, *span_tokens, mark]


def mark_words(inst: Instance, typed: bool) -> tuple[list[str], int, int]:
    """The marked word sequence and the word indices of the head and tail start markers."""
    tokens = list(inst.tokens)
    first, second = sorted((("head", inst.head), ("tail", inst.tail)), key=lambda p: p[1].start)
    words: list[str] = []
    starts: dict[str, int] = {}
    cursor = 0
    for name, span in (first, second):
        words += tokens[cursor:span.start]
        starts[name] = len(words)
        mark, type_mark = (HEAD_MARK, HEAD_TYPE_MARK) if name == "head" else (
            TAIL_MARK, TAIL_TYPE_MARK)
        words += _wrap(tokens[span.start:span.end], span, mark, type_mark, typed)
        cursor = span.end
    words += tokens[cursor:]
    return words, starts["head"], starts["tail"]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    head_pos: int
    tail_pos: int


def encode(tokenizer, inst: Instance, typed: bool, max_length: int) -> Encoded:
    """Sub-token ids of the marked sentence and the positions of the two start markers.

    A sentence longer than `max_length` keeps a window of sub-tokens around both entities,
    so the markers are never cut off.
    """
    words, head_word, tail_word = mark_words(inst, typed)
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
    ids, word_ids = enc["input_ids"], enc.word_ids()
    # the tokenizer's own special tokens ([CLS] ... [SEP], <s> ... </s>) frame the body
    lead = next(i for i, w in enumerate(word_ids) if w is not None)
    trail = next(i for i, w in enumerate(reversed(word_ids)) if w is not None)
    prefix, body, suffix = ids[:lead], ids[lead:len(ids) - trail], ids[len(ids) - trail:]
    head_pos = word_ids.index(head_word) - lead
    tail_pos = word_ids.index(tail_word) - lead
    budget = max_length - len(prefix) - len(suffix)
    start = 0
    if len(body) > budget:
        # centre the window on the two markers, clipped to the sentence
        lo, hi = min(head_pos, tail_pos), max(head_pos, tail_pos)
        if hi - lo >= budget:
            raise ValueError(f"instance {inst.id}: the two entities are more than max_length "
                             f"({max_length}) sub-tokens apart")
        start = max(0, min(lo - (budget - (hi - lo)) // 2, len(body) - budget))
        body = body[start:start + budget]
    offset = len(prefix) - start
    return Encoded(prefix + body + suffix, head_pos + offset, tail_pos + offset)
