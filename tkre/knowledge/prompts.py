"""The two prompts, as chat messages (the backend renders them with the model's chat template).

EDKG asks why the head holds the relation with the tail in one K-shot sentence. SCDG shows the
relation's schema (name, description, allowed entity types) and real examples, and asks for ONE
new sample as a JSON object; `SAMPLE_JSON_SCHEMA` constrains decoding where the engine can.
"""

from __future__ import annotations

import hashlib
import json

from tkre.schema import Instance, RelationSchema

# Every string is bounded, so a constrained answer always closes within its token budget (a
# sentence of the filters' 60 words fits in 400 characters); an unbounded string let a small
# model write until max_tokens and leave the JSON unparseable.
SAMPLE_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "relation": {"type": "string", "maxLength": 100},
        "sentence": {"type": "string", "maxLength": 400},
        "head": {"type": "string", "maxLength": 100},
        "head_type": {"type": "string", "maxLength": 40},
        "tail": {"type": "string", "maxLength": 100},
        "tail_type": {"type": "string", "maxLength": 40},
    },
    "required": ["relation", "sentence", "head", "head_type", "tail", "tail_type"],
    "additionalProperties": False,
}



def compact_json_regex(schema: dict) -> str:
    """The schema's objects written compactly, as one regular expression: the properties in
    order, `"name": "value"` joined by ", ", each string within its maxLength, no control
    characters. Engines apply JSON schemas with free whitespace between tokens, which a small
    model can fill until max_tokens (the JSON then never closes); this form leaves none."""
    char = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])'
    fields = [f'"{name}": "{char}{{0,{spec["maxLength"]}}}"'
              for name, spec in schema["properties"].items()]
    return r"\{" + ", ".join(fields) + r"\}"


SAMPLE_REGEX = compact_json_regex(SAMPLE_JSON_SCHEMA)

_EDKG_SYSTEM = ("You explain relations between entities in sentences. Answer in two or three "
                "plain sentences and name both entities.")
_SCDG_SYSTEM = ("You write new training sentences for relation extraction. Answer with exactly "
                "one JSON object and nothing else.")


def sentence(inst: Instance) -> str:
    return " ".join(inst.tokens)


def edkg_messages(inst: Instance, description: str = "") -> list[dict[str, str]]:
    """Ask why `inst.head` has `inst.relation` with `inst.tail` in its sentence."""
    meaning = f' ("{description}")' if description else ""
    user = (f"Sentence: {sentence(inst)}\n"
            f'Explain why the subject "{inst.head.text}" has the relation '
            f'"{inst.relation}"{meaning} with the object "{inst.tail.text}" in this sentence.')
    return [{"role": "system", "content": _EDKG_SYSTEM}, {"role": "user", "content": user}]


def _sample_json(inst: Instance) -> str:
    return json.dumps({"relation": inst.relation, "sentence": sentence(inst),
                       "head": inst.head.text, "head_type": inst.head.type or "entity",
                       "tail": inst.tail.text, "tail_type": inst.tail.type or "entity"})


def scdg_messages(schema: RelationSchema, demonstrations: list[Instance]
                  ) -> list[dict[str, str]]:
    """Ask for one new labelled sentence of `schema.name`, shown the schema and real examples.

    Nothing here is per request: the requests of a relation given the same demonstrations send
    byte-identical messages (system, schema, examples, instruction), so an engine computes that
    prompt once (vLLM's prefix cache, the hf backend's shared prefill)."""
    lines = [f'Relation: "{schema.name}"']
    if schema.description:
        lines.append(f"Meaning: {schema.description}")
    lines.append("The head entity has this relation with the tail entity.")
    if schema.head_types:
        lines.append(f"Allowed head entity types: {', '.join(schema.head_types)}")
    if schema.tail_types:
        lines.append(f"Allowed tail entity types: {', '.join(schema.tail_types)}")
    lines.append("Real examples:")
    lines += [_sample_json(demo) for demo in demonstrations]
    lines.append(
        "Write ONE new example for this relation as a JSON object with the keys relation, "
        "sentence, head, head_type, tail, tail_type. The sentence must be new (not a copy of an "
        "example), contain the head and tail strings exactly, and express the relation.")
    return [{"role": "system", "content": _SCDG_SYSTEM},
            {"role": "user", "content": "\n".join(lines)}]


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(message["content"] for message in messages)


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """A short stable hash of the prompt, stored with every generated row."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
