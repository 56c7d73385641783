"""Prompts: what the LLM is shown, and that the JSON it is asked for parses back."""

import json

from tkre.knowledge import prompts
from tkre.knowledge.filters import check_candidate
from tkre.schema import Instance, RelationSchema, Span, derive_schemas

DEMO = Instance(id="d1", tokens=("Ada", "Brook", "founded", "Lumen", "Labs", "."),
                head=Span(3, 5, "Lumen Labs", "organization"),
                tail=Span(0, 2, "Ada Brook", "person"), relation="org:founded_by")
SCHEMA = RelationSchema("org:founded_by", "the founder of an organization",
                        ("organization",), ("person",))


def test_edkg_prompt_names_both_entities_relation_and_sentence():
    messages = prompts.edkg_messages(DEMO, "the founder of an organization")
    user = messages[-1]["content"]
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert "Ada Brook founded Lumen Labs ." in user
    assert '"Lumen Labs"' in user and '"Ada Brook"' in user and '"org:founded_by"' in user
    assert "the founder of an organization" in user


def test_scdg_prompt_shows_schema_types_and_demonstrations_as_json():
    user = prompts.scdg_messages(SCHEMA, [DEMO])[-1]["content"]
    assert "Allowed head entity types: organization" in user
    assert "Allowed tail entity types: person" in user
    demo_lines = [line for line in user.splitlines() if line.startswith("{")]
    sentences = [json.loads(line)["sentence"] for line in demo_lines]
    assert sentences == ["Ada Brook founded Lumen Labs ."]


def test_demonstration_json_is_what_the_filter_accepts_except_as_a_copy():
    messages = prompts.scdg_messages(SCHEMA, [DEMO])
    line = next(line for line in messages[-1]["content"].splitlines() if line.startswith("{"))
    inst, reason = check_candidate(line, SCHEMA, [DEMO], prompts.prompt_text(messages), set())
    assert inst is None and reason == "copies_demonstration"


def test_json_schema_requires_every_field():
    assert set(prompts.SAMPLE_JSON_SCHEMA["required"]) == {
        "relation", "sentence", "head", "head_type", "tail", "tail_type"}


def test_prompt_hash_is_stable_and_sensitive():
    a = prompts.edkg_messages(DEMO)
    assert prompts.prompt_hash(a) == prompts.prompt_hash(prompts.edkg_messages(DEMO))
    assert prompts.prompt_hash(a) != prompts.prompt_hash(prompts.edkg_messages(DEMO, "x"))


def test_derived_schemas_take_types_from_data_unless_overridden():
    other = Instance(id="d2", tokens=("Orbix", "was", "started", "by", "Li", "Wei"),
                     head=Span(0, 1, "Orbix", "company"), tail=Span(4, 6, "Li Wei", "person"),
                     relation="org:founded_by")
    schemas = derive_schemas([DEMO, other], {"org:founded_by": "founder"})
    assert schemas["org:founded_by"].head_types == ("company", "organization")
    assert schemas["org:founded_by"].description == "founder"
    schemas = derive_schemas([DEMO], overrides={"org:founded_by": {"head_types": ["org"]}})
    assert schemas["org:founded_by"].head_types == ("org",)
    assert schemas["org:founded_by"].tail_types == ("person",)


def test_the_constraint_regex_is_the_schema_written_compactly():
    import json
    import re

    sample = {"relation": "org:founded_by", "sentence": 'Ann "the elder" Lee founded Orbix.',
              "head": "Orbix", "head_type": "organization", "tail": "Ann Lee",
              "tail_type": "person"}
    assert re.fullmatch(prompts.SAMPLE_REGEX, json.dumps(sample))
    assert not re.fullmatch(prompts.SAMPLE_REGEX, json.dumps(sample, indent=1))  # whitespace
    assert not re.fullmatch(prompts.SAMPLE_REGEX, json.dumps(sample | {"head": "x" * 101}))
    assert not re.fullmatch(prompts.SAMPLE_REGEX, json.dumps(sample)[:-1])  # unclosed
    reordered = dict(reversed(list(sample.items())))
    assert not re.fullmatch(prompts.SAMPLE_REGEX, json.dumps(reordered))
