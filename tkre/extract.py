"""The extractor: a trained model from ROOT, batched prediction, and relations added at run time.

    from tkre.extract import Extractor
    extractor = Extractor.from_root("runs/demo")            # or s3://bucket/prefix
    extractor.extract([{"text": "Ada Lovelace was born in London .",
                        "head": {"start": 0, "end": 12}, "tail": {"start": 25, "end": 31}}])
    extractor.register("place_of_birth", [example, ...], description="...")

Items come in the wire format of the HTTP service (`serve/app.py`): raw text with character
offsets (end exclusive) or tokens with token spans, a head and a tail, or a list of `entities`
that yields every ordered pair. `parse_item` turns one into Instances and rejects a bad one with
a DataError naming the field ("items[2].head"), so a service answers 4xx and never fails a batch.

How trained and registered relations combine
--------------------------------------------
The trained head gives a closed-set posterior over its labels, p_c = softmax(logits)_c (the
"no relation" label included). A registered relation r is a prototype: the normalised mean of its
examples' normalised pair embeddings [h_@ ; h_#], taken from the same encoder and forward pass.
Its score is a one-vs-rest probability, q_r = sigmoid((cos(x, prototype_r) - threshold) /
temperature), where threshold and temperature were fitted by logistic regression on N-way K-shot
episodes (`tkre.fewshot.fit_calibration`; same-relation and other-relation pairs weighted
equally). Both are estimates of P(label | x), so every candidate is ranked by its own score and
the best one wins: a registered relation is predicted exactly when the query is more likely to
express it than the trained model's best label (including "no relation"). A query far from every
prototype gets q near 0 and keeps the trained prediction, so registering a relation never
changes predictions for unrelated text, and with no registrations the output is the trained
model's. The scores are not renormalised across the two groups (q is not a share of p).

The calibration comes from ROOT/extract/calibration.json when `jobs/fewshot_eval.py --root ROOT`
has written one for this model, else `DEFAULT_CALIBRATION`.

Registrations are files, ROOT/extract/relations/<name>.json (the examples as Instances), so they
survive restarts and every replica sees them: each replica compares the folder's listing
(mtime/size locally, ETags on S3) at most every `refresh_s` seconds before a batch and embeds
the examples of new or changed files itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tkre import storage
from tkre.data.text import span_from_chars, tokenize_with_offsets
from tkre.fewshot import Calibration, PairEncoder, length_batches, pair_embedding, prototype
from tkre.finetune.markers import Encoded, encode
from tkre.finetune.model import load_classifier
from tkre.schema import DataError, Instance, Span

log = logging.getLogger(__name__)

MODEL_DIR = "finetune/model"
RELATIONS_DIR = "extract/relations"
CALIBRATION_FILE = "extract/calibration.json"
# Fitted on FewRel val_wiki by jobs/fewshot_eval.py (5-way 1-shot and 5-way 5-shot pairs pooled,
# 500 episodes each, seed 42) for the bundled encoder fine-tuned one epoch on the demo data
# (0.699 / 0.165); the plain bundled encoder gives 0.745 / 0.148.
DEFAULT_CALIBRATION = Calibration(threshold=0.70, temperature=0.165)
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
QUERY_LABEL = "?"  # the relation of a query Instance: unknown, and never read


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything larger is rejected with the field named."""

    max_items: int = 64
    max_text_chars: int = 5000
    max_entities: int = 16
    max_pairs: int = 256
    max_top_k: int = 10
    max_examples: int = 64


# --- the wire format -----------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedItem:
    """The Instances of one item, where it is ("items[2]"), and for an `entities` item the
    (head, tail) entity indices of each Instance."""

    instances: list[Instance]
    where: str
    pairs: list[tuple[int, int]] | None = None


def field_error(message: str, field: str) -> DataError:
    return DataError(message, field=field)


def _entity(value: Any, where: str, text: str | None, tokens: list[str],
            offsets: list[tuple[int, int]]) -> Span:
    if not isinstance(value, dict):
        raise field_error(f"must be an object with start and end, got {type(value).__name__}",
                          where)
    for key in ("start", "end"):
        if isinstance(value.get(key), bool) or not isinstance(value.get(key), int):
            raise field_error(f"must be an integer, got {value.get(key)!r}", f"{where}.{key}")
    kind = value.get("type")
    if kind is not None and (not isinstance(kind, str) or len(kind) > 64):
        raise field_error("must be a string of at most 64 characters or null", f"{where}.type")
    start, end = value["start"], value["end"]
    if text is not None:
        if start < 0 or start >= len(text):
            raise field_error(f"character offset {start} is outside the text's {len(text)} "
                              "characters", f"{where}.start")
        return span_from_chars(text, offsets, tokens, start, end, kind or None, field=where)
    if not 0 <= start < end <= len(tokens):
        raise field_error(f"token span [{start}, {end}) is not inside the {len(tokens)} tokens",
                    f"{where}.start")
    return Span(start, end, " ".join(tokens[start:end]), kind or None)


def _words(item: dict, where: str, limits: Limits
           ) -> tuple[str | None, list[str], list[tuple[int, int]]]:
    """(text or None, tokens, character offsets) of a text-form or token-form item."""
    if ("text" in item) == ("tokens" in item):
        raise field_error("give exactly one of text (character offsets) or tokens (token spans)",
                          f"{where}.text")
    if "text" in item:
        text = item["text"]
        if not isinstance(text, str) or not text.strip():
            raise field_error("must be a non-empty string", f"{where}.text")
        if len(text) > limits.max_text_chars:
            raise field_error(f"has {len(text)} characters; the limit is {limits.max_text_chars}",
                              f"{where}.text")
        tokens, offsets = tokenize_with_offsets(text)
        if not tokens:
            raise field_error("holds no word or punctuation token", f"{where}.text")
        return text, tokens, offsets
    tokens = item["tokens"]
    if not isinstance(tokens, list) or not tokens:
        raise field_error("must be a non-empty list of strings", f"{where}.tokens")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token or token != token.strip():
            raise field_error(f"token {i} must be a non-empty string without surrounding "
                              "whitespace", f"{where}.tokens")
    if sum(len(t) + 1 for t in tokens) > limits.max_text_chars:
        raise field_error(f"the tokens exceed {limits.max_text_chars} characters",
                          f"{where}.tokens")
    return None, tokens, []


def _instance(ident: str, tokens: list[str], head: Span, tail: Span, relation: str,
              where: str) -> Instance:
    try:
        return Instance(id=ident, tokens=tuple(tokens), head=head, tail=tail, relation=relation)
    except DataError as err:  # e.g. overlapping spans: name the item's field
        raise field_error(err.message, f"{where}.{err.field}" if err.field else where) from None


def parse_item(item: Any, where: str = "item", limits: Limits = Limits(),
               allow_entities: bool = True, relation: str = QUERY_LABEL) -> ParsedItem:
    """One wire-format item -> its Instances; DataError (field = where + path) when bad."""
    if not isinstance(item, dict):
        raise field_error(f"must be an object, got {type(item).__name__}", where)
    item = {key: value for key, value in item.items() if value is not None}
    text, tokens, offsets = _words(item, where, limits)
    if "entities" in item and ("head" in item or "tail" in item):
        raise field_error("give head and tail, or entities, not both", f"{where}.entities")
    if "entities" not in item or not allow_entities:
        for role in ("head", "tail"):
            if role not in item:
                raise field_error("is required" + (" (or give entities)" if allow_entities else ""),
                                  f"{where}.{role}")
        head = _entity(item["head"], f"{where}.head", text, tokens, offsets)
        tail = _entity(item["tail"], f"{where}.tail", text, tokens, offsets)
        return ParsedItem([_instance(where, tokens, head, tail, relation, where)], where)
    entities = item["entities"]
    if not isinstance(entities, list) or not 2 <= len(entities) <= limits.max_entities:
        raise field_error(f"must be a list of 2 to {limits.max_entities} entities",
                          f"{where}.entities")
    spans = [_entity(e, f"{where}.entities[{i}]", text, tokens, offsets)
             for i, e in enumerate(entities)]
    for j, b in enumerate(spans):
        for i, a in enumerate(spans[:j]):
            if a.start < b.end and b.start < a.end:
                raise field_error(f"overlaps entity {i}", f"{where}.entities[{j}]")
    pairs = [(i, j) for i in range(len(spans)) for j in range(len(spans)) if i != j]
    return ParsedItem([_instance(f"{where}[{i},{j}]", tokens, spans[i], spans[j], relation,
                                 where) for i, j in pairs], where, pairs)


def parse_items(items: Any, limits: Limits = Limits()) -> list[ParsedItem]:
    """The `items` of an extract request, with the request-wide limits checked."""
    if not isinstance(items, list) or not items:
        raise field_error("must be a non-empty list", "items")
    if len(items) > limits.max_items:
        raise field_error(f"has {len(items)} items; the limit is {limits.max_items}", "items")
    parsed = [parse_item(item, f"items[{i}]", limits) for i, item in enumerate(items)]
    pairs = sum(len(p.instances) for p in parsed)
    if pairs > limits.max_pairs:
        raise field_error(f"ask for {pairs} entity pairs; the limit is {limits.max_pairs}", "items")
    return parsed


# --- predictions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    relation: str
    score: float
    top_k: list[tuple[str, float]]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        ranked = self.top_k[:top_k] if top_k is not None else self.top_k
        return {"relation": self.relation, "score": self.score,
                "top_k": [{"relation": r, "score": s} for r, s in ranked]}


def format_results(parsed: list[ParsedItem], predictions: list[Prediction], top_k: int
                   ) -> list[dict[str, Any]]:
    """One result per item: a prediction, or for an entities item one per ordered pair."""
    results, cursor = [], 0
    for item in parsed:
        chunk = predictions[cursor:cursor + len(item.instances)]
        cursor += len(item.instances)
        if item.pairs is None:
            results.append(chunk[0].to_dict(top_k))
        else:
            results.append({"pairs": [{"head": h, "tail": t, **p.to_dict(top_k)}
                                      for (h, t), p in zip(item.pairs, chunk, strict=True)]})
    return results


# --- the registry of run-time relations ----------------------------------------------------

@dataclass
class Registered:
    name: str
    description: str
    examples: list[Instance]
    prototype: torch.Tensor = field(repr=False)


class RelationRegistry:
    """Run-time relations stored as ROOT/extract/relations/<name>.json, one file each."""

    def __init__(self, folder: str, embed, refresh_s: float = 1.0):
        self.folder, self.embed, self.refresh_s = folder, embed, refresh_s
        self._entries: dict[str, Registered] = {}
        self._versions: dict[str, Any] = {}
        self._checked = float("-inf")
        self._dirty = False  # changed here since the last listing: rebuild on the next refresh
        self._lock = threading.Lock()

    def _listing(self) -> dict[str, Any]:
        """{file name: version marker} of the *.json files."""
        return {name: version for name, version in storage.versions(self.folder).items()
                if name.endswith(".json") and not name.startswith(".")}

    def refresh(self, force: bool = False) -> bool:
        """Re-read changed files (at most every refresh_s unless forced); True when changed."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < self.refresh_s:
                return False
            self._checked = now
            listing = self._listing()
            if listing == self._versions and not self._dirty:
                return False
            entries = {}
            for file, version in listing.items():
                name = file[:-len(".json")]
                if self._versions.get(file) == version and name in self._entries:
                    entries[name] = self._entries[name]
                    continue
                try:
                    row = storage.read_json(storage.join(self.folder, file))
                    examples = [Instance.from_dict(e) for e in row["examples"]]
                    entries[name] = Registered(name, row.get("description", ""), examples,
                                               prototype(self.embed(examples)))
                except FileNotFoundError:  # deleted between listing and reading
                    continue
                except (DataError, KeyError, TypeError, ValueError) as err:
                    log.warning("skipping unreadable relation file %s: %s", file, err)
            self._entries, self._versions, self._dirty = entries, listing, False
            return True

    def snapshot(self) -> tuple[list[str], torch.Tensor | None]:
        with self._lock:
            names = sorted(self._entries)
            if not names:
                return [], None
            return names, torch.stack([self._entries[n].prototype for n in names])

    def entries(self) -> list[Registered]:
        with self._lock:
            return [self._entries[n] for n in sorted(self._entries)]

    def add(self, name: str, description: str, examples: list[Instance]) -> Registered:
        entry = Registered(name, description, examples, prototype(self.embed(examples)))
        storage.write_json(storage.join(self.folder, f"{name}.json"), {
            "name": name, "description": description,
            "examples": [e.to_dict() for e in examples], "created": time.time()})
        with self._lock:
            self._entries[name] = entry
            self._versions.pop(f"{name}.json", None)  # its stored version is learnt on refresh
            self._checked, self._dirty = float("-inf"), True
        return entry

    def remove(self, name: str) -> bool:
        self.refresh(force=True)
        with self._lock:
            known = name in self._entries
        if known:
            storage.delete(storage.join(self.folder, f"{name}.json"))
            with self._lock:
                self._entries.pop(name, None)
                self._checked, self._dirty = float("-inf"), True
        return known


# --- the extractor -------------------------------------------------------------------------

class Extractor:
    """A trained classifier plus run-time relations; thread-safe for concurrent predict calls."""

    def __init__(self, model, tokenizer, meta, registry_folder: str | None = None,
                 calibration: Calibration = DEFAULT_CALIBRATION, refresh_s: float = 1.0,
                 source: str = ""):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta
        self.calibration, self.source = calibration, source
        self.device = next(model.parameters()).device
        self.pair_encoder = PairEncoder(model.encoder, tokenizer, meta.typed_markers,
                                        meta.max_length)
        self.registry = (RelationRegistry(registry_folder, self.pair_encoder.embed, refresh_s)
                         if registry_folder else None)
        if self.registry:
            self.registry.refresh(force=True)

    @classmethod
    def from_root(cls, root: str, device: str | None = None, refresh_s: float = 1.0
                  ) -> Extractor:
        """ROOT/finetune/model (an S3 root is downloaded once to the local cache), the
        registry under ROOT/extract/relations, the calibration file when there is one."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model_dir = storage.local_copy(storage.join(root, MODEL_DIR))
        model, tokenizer, meta = load_classifier(model_dir, device)
        calibration_uri = storage.join(root, CALIBRATION_FILE)
        calibration = (Calibration(**storage.read_json(calibration_uri))
                       if storage.exists(calibration_uri) else DEFAULT_CALIBRATION)
        return cls(model, tokenizer, meta, storage.join(root, RELATIONS_DIR), calibration,
                   refresh_s, source=storage.join(root, MODEL_DIR))

    # -- prediction

    def encode(self, parsed: list[ParsedItem]) -> list[Encoded]:
        """Sub-token ids of every instance; DataError when the entities cannot fit."""
        out = []
        for item in parsed:
            for inst in item.instances:
                try:
                    out.append(encode(self.tokenizer, inst, self.meta.typed_markers,
                                      self.meta.max_length))
                except ValueError:
                    role = "tail" if item.pairs is None else "entities"
                    raise field_error(f"the entities are more than {self.meta.max_length} "
                                      "sub-tokens apart (the model's max_length)",
                                      f"{item.where}.{role}") from None
        return out

    @torch.inference_mode()
    def predict_encoded(self, encoded: list[Encoded], top_k: int = 3,
                        batch_size: int = 64) -> list[Prediction]:
        """Scores of every trained and registered relation, ranked; one forward per batch."""
        names, prototypes = self.registry.snapshot() if self.registry else ([], None)
        labels = list(self.meta.labels) + names
        predictions: list[Prediction | None] = [None] * len(encoded)
        for indices, tensors in length_batches(encoded, self.tokenizer.pad_token_id, batch_size):
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
            pairs = pair_embedding(self.model.encoder, **tensors)
            scores = self.model.head(pairs).float().softmax(-1).cpu()
            if prototypes is not None:
                cosine = F.normalize(pairs.float(), dim=-1).cpu() @ prototypes.T
                scores = torch.cat([scores, self.calibration.probability(cosine)], dim=-1)
            best = scores.topk(min(top_k, len(labels)), dim=-1)
            for row, index in enumerate(indices):
                ranked = [(labels[j], float(s)) for s, j in zip(best.values[row].tolist(),
                                                                best.indices[row].tolist(),
                                                                strict=True)]
                predictions[index] = Prediction(ranked[0][0], ranked[0][1], ranked)
        return predictions  # type: ignore[return-value]

    def extract(self, items: list[dict], top_k: int = 3, limits: Limits = Limits()
                ) -> list[dict[str, Any]]:
        """The service's /v1/extract without the service: wire items in, results out."""
        if not 1 <= top_k <= limits.max_top_k:
            raise field_error(f"must be between 1 and {limits.max_top_k}", "top_k")
        if self.registry:
            self.registry.refresh()
        parsed = parse_items(items, limits)
        return format_results(parsed, self.predict_encoded(self.encode(parsed), top_k), top_k)

    # -- run-time relations

    def register(self, name: str, examples: list[dict], description: str = "",
                 limits: Limits = Limits()) -> dict[str, Any]:
        """Add (or replace) a relation from wire-format examples (head and tail each)."""
        if self.registry is None:
            raise RuntimeError("this extractor has no registry folder")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise field_error("must be 1-64 characters: a letter, then letters, digits, _ . : -",
                              "name")
        if name in self.meta.labels:
            raise field_error(f"{name!r} is a trained label of this model", "name")
        if not isinstance(examples, list) or not 1 <= len(examples) <= limits.max_examples:
            raise field_error(f"must be a list of 1 to {limits.max_examples} examples", "examples")
        parsed = [parse_item(e, f"examples[{i}]", limits, allow_entities=False, relation=name)
                  for i, e in enumerate(examples)]
        self.encode(parsed)  # rejects examples whose entities cannot fit
        instances = [p.instances[0] for p in parsed]
        entry = self.registry.add(name, description or "", instances)
        return self._describe_registered(entry)

    def unregister(self, name: str) -> bool:
        """Remove a run-time relation; False when there is none by that name."""
        return bool(self.registry) and self.registry.remove(name)

    def relations(self) -> list[dict[str, Any]]:
        trained = [{"name": label, "kind": "trained", "description": "", "examples": None,
                    "no_relation": label == self.meta.no_relation} for label in self.meta.labels]
        if self.registry:
            self.registry.refresh(force=True)
        registered = [self._describe_registered(e)
                      for e in (self.registry.entries() if self.registry else [])]
        return trained + registered

    @staticmethod
    def _describe_registered(entry: Registered) -> dict[str, Any]:
        return {"name": entry.name, "kind": "registered", "description": entry.description,
                "examples": len(entry.examples), "no_relation": False}

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "labels": list(self.meta.labels),
                "no_relation": self.meta.no_relation, "typed_markers": self.meta.typed_markers,
                "max_length": self.meta.max_length, "encoder_source": self.meta.encoder_source,
                "device": str(self.device), "calibration": self.calibration.to_dict()}

    @torch.inference_mode()
    def self_check(self) -> None:
        """Raise unless a fixed probe sentence yields one finite distribution over the labels."""
        probe = parse_item({"tokens": ["Ada", "lives", "in", "London", "."],
                            "head": {"start": 0, "end": 1}, "tail": {"start": 3, "end": 4}})
        encoded = self.encode([probe])
        tensors = {k: v.to(self.device) for k, v in
                   next(length_batches(encoded, self.tokenizer.pad_token_id, 1))[1].items()}
        probs = self.model.head(pair_embedding(self.model.encoder, **tensors)).float().softmax(-1)
        if probs.shape != (1, len(self.meta.labels)) or not torch.isfinite(probs).all():
            raise RuntimeError(f"model self-check failed: probabilities {probs.tolist()}")


def limits_from(values: dict[str, Any] | None) -> Limits:
    """Limits from a config mapping; unknown keys are an error naming them."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(asdict(Limits())))
    if unknown:
        raise ValueError(f"unknown limits: {', '.join(unknown)}")
    return Limits(**{k: int(v) for k, v in values.items()})
