"""The extractor: a trained model from ROOT, batched prediction, and relations added at run time.

    from tkre.extract import Extractor
    extractor = Extractor.from_root("runs/demo")            # or s3://bucket/prefix
    extractor.extract([{"text": "Ada Lovelace was born in London .",
                        "head": {"start": 0, "end": 12}, "tail": {"start": 25, "end": 31}}])
    extractor.register("place_of_birth", [example, ...], description="...")

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
weighted equally). Both are estimates of P(label | x), so every candidate is ranked by its own
score and the best one wins: a registered relation is predicted exactly when the query is more
likely to express it than the trained model's best label (including "no relation"). A query far
from every prototype gets q near 0 and keeps the trained prediction, so registering a relation
never changes predictions for unrelated text, and with no registrations the output is the
trained model's. The scores are not renormalised across the two groups (q is not a share of p).

The calibration comes from ROOT/extract/calibration.json when `jobs/fewshot_eval.py --root ROOT`
has written one for this model, else `DEFAULT_CALIBRATION`. Registrations are files under
ROOT/extract/relations/ (`tkre.extract.registry`), so every replica sees them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from tkre import layout, storage
from tkre.extract.prototypes import Calibration, PairEncoder
from tkre.extract.registry import Registered, RelationRegistry, check_name
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
)
from tkre.finetune.markers import Encoded, encode
from tkre.finetune.model import length_batches, load_classifier, pair_embedding

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
        model_uri = layout.finetune_model(root)
        model, tokenizer, meta = load_classifier(storage.local_copy(model_uri), device)
        calibration_uri = layout.calibration(root)
        calibration = (Calibration(**storage.read_json(calibration_uri))
                       if storage.exists(calibration_uri) else DEFAULT_CALIBRATION)
        return cls(model, tokenizer, meta, layout.relations_dir(root), calibration, refresh_s,
                   source=model_uri)

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
        names, prototypes = self.registry.snapshot() if self.registry else ([], None)
        labels = list(self.meta.labels) + names
        predictions: list[Prediction | None] = [None] * len(encoded)
        for indices, tensors in length_batches(encoded, self.tokenizer.pad_token_id, batch_size):
            pairs, scores = self._forward(tensors)
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

    def results(self, parsed: list[ParsedItem], predictions: list[Prediction], top_k: int
                ) -> list[dict[str, Any]]:
        """The answer to one request, from its parsed items and their pairs' predictions."""
        return format_results(parsed, predictions, top_k)

    def extract(self, items: list[dict], top_k: int = 3,
                limits: RequestLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
        """The service's /v1/extract without the service: wire items in, results out."""
        parsed, encoded = self.prepare(items, top_k, limits)
        return self.results(parsed, self.predict(encoded, top_k), top_k)

    def _refresh_registry(self) -> None:
        if self.registry is None:
            return
        try:
            self.registry.refresh()
        except Exception:  # storage hiccup: keep serving with the relations we have
            log.exception("relation registry refresh failed")

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
        return {"name": entry.name, "kind": "registered", "description": entry.description,
                "examples": len(entry.examples), "no_relation": False}

    # -- what is served, and is it healthy

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
        _, tensors = next(length_batches(self.encode([probe]), self.tokenizer.pad_token_id, 1))
        _, probs = self._forward(tensors)
        if probs.shape != (1, len(self.meta.labels)) or not torch.isfinite(probs).all():
            raise RuntimeError(f"model self-check failed: probabilities {probs.tolist()}")
