"""Entity markers (Zhou & Chen's typed punctuation markers) and encoding for the classifier.

typed:    @ * person * Bill Gates @ founded # ^ organization ^ Microsoft #
untyped:  @ Bill Gates @ founded # Microsoft #

The markers are ordinary punctuation, so no vocabulary is added. The classifier reads the hidden
states at the first sub-token of the two start markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tkre import storage
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


def _frame(ids: list[int], word_ids: list[int | None], head_word: int, tail_word: int
           ) -> tuple[list[int], list[int], list[int], int, int]:
    """(prefix, body, suffix, head marker position, tail marker position in the body): the
    tokenizer's own special tokens ([CLS] ... [SEP], <s> ... </s>) frame the body."""
    lead = next(i for i, w in enumerate(word_ids) if w is not None)
    trail = next(i for i, w in enumerate(reversed(word_ids)) if w is not None)
    prefix, body, suffix = ids[:lead], ids[lead:len(ids) - trail], ids[len(ids) - trail:]
    return (prefix, body, suffix, word_ids.index(head_word) - lead,
            word_ids.index(tail_word) - lead)


def encode(tokenizer, inst: Instance, typed: bool, max_length: int) -> Encoded:
    """Sub-token ids of the marked sentence and the positions of the two start markers.

    A sentence longer than `max_length` keeps a window of sub-tokens around both entities,
    so the markers are never cut off.
    """
    words, head_word, tail_word = mark_words(inst, typed)
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
    return _windowed(inst, enc["input_ids"], enc.word_ids(), head_word, tail_word, max_length)


def encode_many(tokenizer, instances: Sequence[Instance], typed: bool, max_length: int,
                chunk: int = 1024) -> list[Encoded | None]:
    """`encode` for many instances, one tokenizer call per `chunk` of them; None where the two
    entities lie too far apart (where `encode` raises)."""
    out: list[Encoded | None] = []
    for first in range(0, len(instances), chunk):
        part = instances[first:first + chunk]
        marked = [mark_words(inst, typed) for inst in part]
        enc = tokenizer([words for words, _, _ in marked], is_split_into_words=True,
                        add_special_tokens=True)
        for i, (inst, (_, head_word, tail_word)) in enumerate(zip(part, marked, strict=True)):
            try:
                out.append(_windowed(inst, enc["input_ids"][i], enc.word_ids(i), head_word,
                                     tail_word, max_length))
            except ValueError:
                out.append(None)
    return out


def _windowed(inst: Instance, ids: list[int], word_ids: list[int | None], head_word: int,
              tail_word: int, max_length: int) -> Encoded:
    prefix, body, suffix, head_pos, tail_pos = _frame(ids, word_ids, head_word, tail_word)
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


@dataclass(frozen=True)
class EncoderWindow:
    """Which instances the classifier can encode: `encode` succeeds exactly when the two start
    markers lie fewer than max_length sub-tokens (less the special tokens) apart.

    Without a tokenizer the check is a word count, a lower bound (every word is at least one
    sub-token): it drops only instances that certainly do not fit.
    """

    max_length: int
    typed: bool
    tokenizer: Any = field(default=None, compare=False)
    source: str = ""  # where the tokenizer came from; "" for the word count

    @classmethod
    def load(cls, source: str, max_length: int, typed: bool) -> EncoderWindow:
        """The window of the encoder at `source` (a folder, an s3:// URI or a model id);
        the word count when its tokenizer cannot be loaded."""
        from transformers import AutoTokenizer

        try:
            local = storage.local_copy(source) if storage.is_s3(source) else source
            tokenizer = AutoTokenizer.from_pretrained(str(local))
        except (OSError, ValueError) as err:
            print(f"[data] note: no tokenizer from {source} ({type(err).__name__}); records "
                  f"are checked by word count against max_length {max_length}", flush=True)
            return cls(max_length, typed)
        return cls(max_length, typed, tokenizer, source)

    def describe(self) -> str:
        if self.tokenizer is None:
            return f"{self.max_length} words (max_length, counted in words)"
        return f"{self.max_length} sub-tokens (max_length, tokenizer of {self.source})"

    def fits(self, instances: Sequence[Instance]) -> list[bool]:
        marked = [mark_words(inst, self.typed) for inst in instances]
        if self.tokenizer is None:
            return [abs(head - tail) < self.max_length for _, head, tail in marked]
        out = []
        for first in range(0, len(marked), 1024):  # batched: one tokenizer call per chunk
            chunk = marked[first:first + 1024]
            enc = self.tokenizer([words for words, _, _ in chunk], is_split_into_words=True,
                                 add_special_tokens=True)
            for i, (_, head_word, tail_word) in enumerate(chunk):
                prefix, _, suffix, head, tail = _frame(enc["input_ids"][i], enc.word_ids(i),
                                                       head_word, tail_word)
                out.append(abs(head - tail) < self.max_length - len(prefix) - len(suffix))
        return out
