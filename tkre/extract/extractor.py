"""The extractor: a trained model from ROOT, batched prediction, and relations added at run time.

    from tkre.extract import Extractor
    extractor = Extractor.from_root("runs/demo")            # or s3://bucket/prefix
    extractor.extract([{"text": "Ada Lovelace was born in London .",
                        "head": {"start": 0, "end": 12}, "tail": {"start": 25, "end": 31}}])
    extractor.register("place_of_birth", [example, ...], description="...")

Raw text, with no entities given (spaCy finds the candidates, `tkre.extract.candidates`):

    extractor = Extractor.load("runs/demo")           # a run root or a trained model folder
    extractor.extract_text("Ada Lovelace was born in London. She married William King.")
    # [{"head": {"text": "Ada Lovelace", "start": 0, "end": 12, "type": "person"},
    #   "tail": {...}, "relation": "per:city_of_birth", "score": 0.93, "sentence": 0}, ...]
    extractor.extract_texts(texts, thresholds={"per:spouse": 0.8, "*": 0.5}, batch_size=64)

`extract_texts` is `prepare_texts` (spaCy, pairs, encoding) -> `predict` (the candidate pairs
of all texts in length-sorted batches) -> `text_results` (the decision of
`tkre.extract.triples`: best relation, not no-relation, types the schema takes, score at least
the threshold).

`extract` is three steps, which the Serve deployment (`tkre.extract.deployment`) calls one by
one so that the middle one, the forward pass, is shared by concurrent requests: `prepare`
(check and encode the request: every error is the caller's, a 4xx), `predict` (score encoded
pairs from any number of requests) and `results` (each request's answer).

How trained and registered relations combine
--------------------------------------------
The trained head gives a closed-set posterior over its labels, p_c = softmax(logits)_c (the
"no relation" label included). A registered relation r is a prototype: the normalised mean of its
examples' normalised pair embeddings [h_@ ; h_#], taken from the same encoder and forward pass.
Its score is a one-vs-rest probability, q_r = sigmoid((cos(x, prototype_r) - threshold) /
temperature), where threshold and temperature were fitted by logistic regression on N-way K-shot
episodes (`tkre.extract.prototypes.fit_calibration`; same-relation and other-relation pairs
weighted equally). The scores are not renormalised across the two groups (q is not a share of p).

A cosine to one prototype cannot tell a new relation from a trained one it resembles (with the
demo model, "Ada Lovelace was born in London" is as close to a one-example per:city_of_death
prototype as a death sentence is), so r must first pass its gate: q_r >= 0.5 and, when the model
has reference sentences (the K-shot train + dev sentences of its labels), a margin over the
query's nearest reference above r's own threshold, set at registration so that a sentence of the
trained labels drawn like the references passes with probability at most `FLIP_RATE` (2 %;
`tkre.extract.references`). Then r is predicted when q_r beats the trained model's best label
(including "no relation"); a relation that fails its gate is ranked after every trained label.

What holds: with no registrations the output is the trained model's; each registration changes
the prediction of a trained-label sentence drawn like the references with probability at most
FLIP_RATE (measured by `tkre.bench.openset`: on a demo model trained without
per:city_of_birth, which is then registered from 1 or 5 examples, 1-2 % of the other labels'
test sentences flip, 46-67 % without the gate, and 66-97 % of its own test sentences are
found). Sentences unlike every trained label (another domain) are held back by q_r >= 0.5
alone: on the demo model 7 % (1-shot) and 23 % (5-shot) of FewRel queries go to a registered
FewRel relation they do not express. A model with no references (exported before they existed,
and no ROOT/data) has only that gate, and `info()["references"]` says so.

The no-relation threshold and the relation types for raw text come from
ROOT/finetune/model/text_extraction.json (`tkre.extract.thresholds`, written at evaluate time);
without it the types come from ROOT/data and there is no threshold. The calibration comes from
ROOT/extract/calibration.json when `jobs/fewshot_eval.py --root ROOT`
has written one for this model, else `DEFAULT_CALIBRATION`. The references come from the model
folder (written at export), else from ROOT/data (embedded at start). Registrations are files
under ROOT/extract/relations/ (`tkre.extract.registry`), with their gate, so every replica sees
them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tkre import layout, storage
from tkre.extract.candidates import (
    CandidateConfig,
    CandidateFinder,
    Mention,
    TypeFilter,
    given_mentions,
)
from tkre.extract.prototypes import Calibration, PairEncoder
from tkre.extract.references import FLIP_RATE, References, load_for_root
from tkre.extract.registry import Registered, RelationRegistry, check_name
from tkre.extract.triples import Decision, TextPlan, check_thresholds, plan_texts, triples
from tkre.extract.wire import (
    DEFAULT_LIMITS,
    ParsedItem,
    Prediction,
    RequestLimits,
    field_error,
    format_results,
    over_limit,
    parse_item,
    parse_items,
    too_large,
)
from tkre.finetune.markers import Encoded, encode, encode_many
from tkre.finetune.model import length_batches, load_classifier, pair_embedding
from tkre.schema import Instance, RelationSchema, derive_schemas

log = logging.getLogger(__name__)

# Fitted on FewRel val_wiki by jobs/fewshot_eval.py (5-way 1-shot and 5-way 5-shot pairs pooled,
# 500 episodes each, seed 42) for the bundled encoder fine-tuned one epoch on the demo data
# (0.699 / 0.165); the plain bundled encoder gives 0.745 / 0.148.
DEFAULT_CALIBRATION = Calibration(threshold=0.70, temperature=0.165)


class TrainedLabelError(ValueError):
    """A trained label cannot be removed: it is part of the model, not of the registry."""


class Extractor:
    """A trained classifier plus run-time relations; thread-safe for concurrent predict calls."""

    def __init__(self, model, tokenizer, meta, registry_folder: str | None = None,
                 calibration: Calibration = DEFAULT_CALIBRATION, refresh_s: float = 1.0,
                 source: str = "", types: TypeFilter | None = None,
                 no_relation_threshold: float | None = None,
                 candidates: CandidateConfig | None = None,
                 references: References | None = None):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta
        self.calibration, self.source = calibration, source
        self.references = references
        self.device = next(model.parameters()).device
        self.pair_encoder = PairEncoder(model.encoder, tokenizer, meta.typed_markers,
                                        meta.max_length)
        self.registry = (RelationRegistry(registry_folder, self.pair_encoder.embed, refresh_s,
                                          self._gate)
                         if registry_folder else None)
        if self.registry:
            self.registry.refresh(force=True)
        # raw text: the relation types, the fitted no-relation threshold, the candidate finder
        self.types = types or TypeFilter()
        self.no_relation_threshold = no_relation_threshold
        self.candidate_config = candidates or CandidateConfig()
        self._finder: CandidateFinder | None = None
        self._finder_lock = threading.Lock()

    @classmethod
    def load(cls, path: str, device: str | None = None, refresh_s: float = 1.0) -> Extractor:
        """A run root (see `from_root`) or a trained model folder (one holding
        tkre_model.json: no registry, the default calibration)."""
        if not storage.exists(storage.join(path, layout.MODEL_META_FILE)):
            return cls.from_root(path, device, refresh_s)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, meta = load_classifier(storage.local_copy(path), device)
        settings = read_text_settings(path)
        return cls(model, tokenizer, meta, source=path, types=settings["types"],
                   no_relation_threshold=settings["threshold"])._warn_unfitted()

    @classmethod
    def from_root(cls, root: str, device: str | None = None, refresh_s: float = 1.0
                  ) -> Extractor:
        """ROOT/finetune/model (an S3 root is downloaded once to the local cache), the
        registry under ROOT/extract/relations, the calibration file when there is one, the
        raw-text settings (else the relation types of ROOT/data)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model_uri = layout.finetune_model(root)
        model_dir = storage.local_copy(model_uri)
        model, tokenizer, meta = load_classifier(model_dir, device)
        references = load_for_root(root, model_dir, meta, PairEncoder(
            model.encoder, tokenizer, meta.typed_markers, meta.max_length).embed)
        calibration_uri = layout.calibration(root)
        calibration = (Calibration(**storage.read_json(calibration_uri))
                       if storage.exists(calibration_uri) else DEFAULT_CALIBRATION)
        settings = read_text_settings(model_uri, root, meta.no_relation)
        return cls(model, tokenizer, meta, layout.relations_dir(root), calibration, refresh_s,
                   source=model_uri, types=settings["types"],
                   no_relation_threshold=settings["threshold"],
                   references=references)._warn_unfitted()

    def _warn_unfitted(self) -> Extractor:
        if self.no_relation_threshold is None and self.meta.no_relation not in self.meta.labels:
            log.warning("%s has no no-relation label and no fitted threshold (%s): on raw text "
                        "every candidate pair yields its best relation; run jobs/evaluate.py "
                        "on its root to fit one", self.source, layout.TEXT_EXTRACTION_FILE)
        return self

    # -- prediction: prepare -> predict -> results

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

    def prepare(self, items: Any, top_k: int = 3, limits: RequestLimits = DEFAULT_LIMITS
                ) -> tuple[list[ParsedItem], list[Encoded]]:
        """A request's wire items, checked and encoded; DataError naming the field when bad.
        Nothing here touches the model, so a bad request never reaches a batch."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not (
                1 <= top_k <= limits.max_top_k):
            raise field_error(f"must be between 1 and {limits.max_top_k} (max_top_k)", "top_k")
        parsed = parse_items(items, limits)
        return parsed, self.encode(parsed)

    @torch.inference_mode()
    def predict(self, encoded: list[Encoded], top_k: int = 3, batch_size: int = 64
                ) -> list[Prediction]:
        """Scores of every trained and registered relation, ranked; one forward per batch.

        The registry is refreshed first; when storage fails, the relations already known are
        used and the error is logged, so a storage hiccup never fails the requests.
        """
        self._refresh_registry()
        names, prototypes, margins = (self.registry.snapshot() if self.registry
                                      else ([], None, None))
        labels = list(self.meta.labels) + names
        predictions: list[Prediction | None] = [None] * len(encoded)
        for indices, tensors in length_batches(encoded, self.tokenizer.pad_token_id, batch_size):
            pairs, scores = self._forward(tensors)
            order = scores
            if prototypes is not None:
                registered, passed = self._registered_scores(pairs, prototypes, margins)
                scores = torch.cat([scores, registered], dim=-1)
                # a relation that fails its gate ranks after every trained label (scores <= 1)
                order = torch.cat([order, torch.where(passed, registered, registered - 2)], -1)
            best = order.topk(min(top_k, len(labels)), dim=-1)
            for row, index in enumerate(indices):
                ranked = [(labels[j], float(scores[row, j])) for j in best.indices[row].tolist()]
                predictions[index] = Prediction(ranked[0][0], ranked[0][1], ranked)
        return predictions  # type: ignore[return-value]

    def results(self, parsed: list[ParsedItem], predictions: list[Prediction], top_k: int
                ) -> list[dict[str, Any]]:
        """The answer to one request, from its parsed items and their pairs' predictions."""
        return format_results(parsed, predictions, top_k)

    def extract(self, items: list[dict], top_k: int = 3,
                limits: RequestLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
        """The service's /v1/extract without the service: wire items in, results out."""
        parsed, encoded = self.prepare(items, top_k, limits)
        return self.results(parsed, self.predict(encoded, top_k), top_k)

    # -- raw text: prepare_texts -> predict -> text_results

    def extract_text(self, text: str, thresholds: dict[str, float] | None = None
                     ) -> list[dict[str, Any]]:
        """The triples of one text: {"head": {"text", "start", "end", "type"}, "tail": {...},
        "relation", "score", "sentence"}, character offsets into `text` (end exclusive)."""
        return self.extract_texts([text], thresholds)[0]

    def extract_texts(self, texts: list[str], thresholds: dict[str, float] | None = None,
                      batch_size: int = 64) -> list[list[dict[str, Any]]]:
        """The triples of each text; the candidate pairs of all texts go through the model
        together, in length-sorted batches of `batch_size`."""
        checked = self.check_thresholds(thresholds)
        plan, encoded = self.prepare_texts(texts)
        return self.text_results(plan, self.predict(encoded, 1, batch_size), checked)

    def check_thresholds(self, thresholds: Any) -> dict[str, float]:
        """A caller's per-relation thresholds ("*": every other relation); DataError naming
        the key when one is unknown or not in [0, 1]."""
        if thresholds is None:
            return {}
        self._refresh_registry()
        names = self.registry.snapshot()[0] if self.registry else []
        return check_thresholds(thresholds, list(self.meta.labels) + names)

    def candidate_finder(self) -> CandidateFinder:
        """spaCy, loaded on first use (ResourceError when the `text` extra is missing); set
        `candidate_config` to change the pairing (window, nominals)."""
        with self._finder_lock:
            if self._finder is None or self._finder.cfg != self.candidate_config:
                self._finder = CandidateFinder(self.candidate_config)
            return self._finder

    def prepare_texts(self, texts: Sequence[Any], entities: Sequence[Any] | None = None,
                      limits: RequestLimits | None = None, where: str = "texts"
                      ) -> tuple[TextPlan, list[Encoded]]:
        """Texts -> their candidate pairs, encoded. `entities[i]`: the caller's entities of
        text i ([{"start", "end", "type"?}], None: spaCy's). With `limits`, a request past one
        is a TooLarge naming it (the service's 413); a bad text is a DataError naming it
        (`where`[i], or "text" and "entities" when `where` is "text": one text)."""
        if not isinstance(texts, Sequence) or isinstance(texts, str):
            raise field_error("must be a list of strings", where)
        if limits and len(texts) > limits.max_documents:
            raise too_large(where, f"has {len(texts)} documents", "max_documents", limits)
        given: list[list[Mention] | None] = [None] * len(texts)
        for i, text in enumerate(texts):
            at = where if where == "text" else f"{where}[{i}]"
            if not isinstance(text, str):
                raise field_error(f"must be a string, got {type(text).__name__}", at)
            if limits and len(text) > limits.max_document_chars:
                raise too_large(at, f"has {len(text)} characters", "max_document_chars",
                                limits)
            if entities is not None and entities[i] is not None:
                given[i] = given_mentions(entities[i], text, "entities" if where == "text"
                                          else f"{at}.entities")
        sentences = self.candidate_finder().sentences(
            list(texts), given if entities is not None else None)
        plan, instances = plan_texts(texts, sentences, self.types, self.candidate_config.window)
        if limits and len(instances) > limits.max_text_pairs:
            raise too_large(where, f"has {len(instances)} candidate pairs", "max_text_pairs",
                            limits)
        return self.encode_plan(plan, instances)

    def encode_plan(self, plan: TextPlan, instances: list[Instance]
                     ) -> tuple[TextPlan, list[Encoded]]:
        """Encode every candidate; those whose entities lie too far apart for the model are
        left out and counted per document (plan.skipped)."""
        kept, encoded = [], []
        every = encode_many(self.tokenizer, instances, self.meta.typed_markers,
                            self.meta.max_length)
        for candidate, one in zip(plan.candidates, every, strict=True):
            if one is None:
                plan.skipped[candidate.document] += 1
                continue
            encoded.append(one)
            kept.append(candidate)
        plan.candidates = kept
        return plan, encoded

    def text_results(self, plan: TextPlan, predictions: list[Prediction],
                     thresholds: dict[str, float] | None = None) -> list[list[dict[str, Any]]]:
        """Each text's triples, from its plan and its pairs' predictions."""
        decision = Decision(self.meta.no_relation, self.types,
                            self.no_relation_threshold or 0.0, thresholds or {})
        return triples(plan, predictions, decision)

    def _refresh_registry(self) -> None:
        if self.registry is None:
            return
        try:
            self.registry.refresh()
        except Exception:  # storage hiccup: keep serving with the relations we have
            log.exception("relation registry refresh failed")

    def _registered_scores(self, pairs: torch.Tensor, prototypes: torch.Tensor,
                           margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_r of every pair and registered relation [B, R], and whether the pair passes the
        relation's gate (module docstring)."""
        queries = F.normalize(pairs.float(), dim=-1).cpu()
        cosine = queries @ prototypes.T
        passed = cosine >= self.calibration.threshold  # q_r >= 0.5
        if self.references is not None:
            passed &= self.references.margins(queries, prototypes) > margins
        return self.calibration.probability(cosine), passed

    def _gate(self, prototype: torch.Tensor, stored: dict | None) -> dict | None:
        """A relation's gate: the stored one when it was set from these references at the
        same flip rate, else set now; None without references."""
        if self.references is None:
            return None
        if (isinstance(stored, dict) and isinstance(stored.get("margin"), float)
                and stored.get("fingerprint") == self.references.fingerprint
                and stored.get("flip_rate") == FLIP_RATE):
            return stored
        return self.references.gate(prototype)

    def _forward(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pair embeddings on the device, trained-label probabilities on the CPU)."""
        tensors = {k: v.to(self.device) for k, v in tensors.items()}
        pairs = pair_embedding(self.model.encoder, **tensors)
        return pairs, self.model.head(pairs).float().softmax(-1).cpu()

    # -- run-time relations

    def is_trained(self, name: str) -> bool:
        return name in self.meta.labels

    def register(self, name: str, examples: list[dict], description: str = "",
                 limits: RequestLimits = DEFAULT_LIMITS) -> dict[str, Any]:
        """Add (or replace) a relation from wire-format examples (head and tail each);
        DataError naming the field, or the limit, when the request is bad."""
        if self.registry is None:
            raise RuntimeError("this extractor has no registry folder")
        check_name(name)
        if self.is_trained(name):
            raise field_error(f"{name!r} is a trained label of this model", "name")
        if not isinstance(description, str):
            raise field_error("must be a string", "description")
        if len(description) > limits.max_description_chars:
            raise over_limit("description", f"has {len(description)} characters",
                             "max_description_chars", limits)
        if not isinstance(examples, list) or not examples:
            raise field_error("must be a non-empty list of examples", "examples")
        if len(examples) > limits.max_examples:
            raise over_limit("examples", f"has {len(examples)} examples", "max_examples", limits)
        parsed = [parse_item(e, f"examples[{i}]", limits, allow_entities=False, relation=name,
                             size_limit="max_example_chars") for i, e in enumerate(examples)]
        self.encode(parsed)  # rejects examples whose entities cannot fit
        self.registry.refresh(force=True)
        known = [entry.name for entry in self.registry.entries()]
        if name not in known and len(known) >= limits.max_relations:
            raise over_limit("name", f"would be relation {len(known) + 1}", "max_relations",
                             limits)
        entry = self.registry.add(name, description, [p.instances[0] for p in parsed])
        return self._describe_registered(entry)

    def unregister(self, name: str) -> bool:
        """Remove a run-time relation; False when there is none by that name, TrainedLabelError
        for a trained label, DataError for a name no relation can have."""
        if self.is_trained(name):
            raise TrainedLabelError(f"{name!r} is a trained label; only registered relations "
                                    "can be deleted")
        check_name(name)
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
        """`margin_threshold`: its gate's threshold (None: the model has no references)."""
        return {"name": entry.name, "kind": "registered", "description": entry.description,
                "examples": len(entry.examples), "no_relation": False,
                "margin_threshold": entry.gate["margin"] if entry.gate else None}

    # -- what is served, and is it healthy

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "labels": list(self.meta.labels),
                "no_relation": self.meta.no_relation, "typed_markers": self.meta.typed_markers,
                "max_length": self.meta.max_length, "encoder_source": self.meta.encoder_source,
                "device": str(self.device), "calibration": self.calibration.to_dict(),
                "references": (self.references.describe() if self.references else
                               "none: registered relations are gated by the calibration "
                               "alone (q >= 0.5); re-export the model (jobs/finetune.py) or "
                               "keep ROOT/data to hold them against the trained labels"),
                "no_relation_threshold": self.no_relation_threshold,
                "relation_types": self.types.to_dict()}

    @torch.inference_mode()
    def self_check(self) -> None:
        """Raise unless a fixed probe sentence yields one finite distribution over the labels."""
        probe = parse_item({"tokens": ["Ada", "lives", "in", "London", "."],
                            "head": {"start": 0, "end": 1}, "tail": {"start": 3, "end": 4}})
        _, tensors = next(length_batches(self.encode([probe]), self.tokenizer.pad_token_id, 1))
        _, probs = self._forward(tensors)
        if probs.shape != (1, len(self.meta.labels)) or not torch.isfinite(probs).all():
            raise RuntimeError(f"model self-check failed: probabilities {probs.tolist()}")


# --- raw-text settings of a model ------------------------------------------------------------

def types_from_data(root: str, no_relation: str) -> TypeFilter:
    """The relation types of ROOT/data's train and dev splits (untyped when there is none)."""
    from tkre.data.datasets import load_prepared

    if not layout.data_done(root):
        return TypeFilter()
    splits = load_prepared(root)
    schemas = derive_schemas(splits.train + splits.dev)
    return TypeFilter.from_schemas(s for name, s in schemas.items() if name != no_relation)


def read_text_settings(model_dir: str, root: str | None = None, no_relation: str = ""
                       ) -> dict[str, Any]:
    """{"types": TypeFilter, "threshold": float or None} from the model folder's
    text_extraction.json; without one, the types of ROOT/data (when a root is given)."""
    uri = layout.text_extraction(model_dir)
    if not storage.exists(uri):
        types = types_from_data(root, no_relation) if root else TypeFilter()
        return {"types": types, "threshold": None}
    row = storage.read_json(uri)
    schemas = [RelationSchema(name, head_types=tuple(t["head"]), tail_types=tuple(t["tail"]))
               for name, t in row.get("relation_types", {}).items()]
    return {"types": TypeFilter.from_schemas(schemas), "threshold": row.get("threshold")}
