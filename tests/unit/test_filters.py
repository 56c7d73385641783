"""Generation filters: hostile model outputs, exact token spans, reject reasons, explanations."""

from __future__ import annotations

import json

import pytest

from tkre.data.text import tokenize_with_offsets
from tkre.knowledge.filters import (
    ACCEPTED,
    EXPLANATION_REJECT_REASONS,
    REJECT_REASONS,
    Limits,
    check_candidate,
    check_explanation,
    explanation_spans,
    extract_json_object,
    locate_entities,
    normalize,
)
from tkre.schema import Instance, RelationSchema, Span

FOUNDED = RelationSchema("org:founded_by", "the organisation was founded by the person",
                         head_types=("ORGANIZATION",), tail_types=("PERSON",))
HQ_STATE = RelationSchema("org:stateorprovince_of_headquarters",
                          head_types=("ORGANIZATION",), tail_types=("STATE_OR_PROVINCE",))
UNTYPED = RelationSchema("Cause-Effect(e1,e2)")


def make(sentence: str, head: tuple[int, int], tail: tuple[int, int], relation: str,
         inst_id: str) -> Instance:
    tokens, _ = tokenize_with_offsets(sentence)
    return Instance(id=inst_id, tokens=tuple(tokens), head=Span(*head, ""),
                    tail=Span(*tail, ""), relation=relation)


DEMOS = [
    make("Acme Robotics was founded by Maria Keller in 1998.", (0, 2), (5, 7),
         "org:founded_by", "d1"),
    make("Engineer Tomas Berg started Bluefin Labs after leaving university.", (4, 6), (1, 3),
         "org:founded_by", "d2"),
]
PROMPT = (
    "Write one new sentence that expresses the relation org:founded_by. "
    "The head entity must be an organization and the tail entity must be a person who created it.\n"
    "Examples:\n"
    "Acme Robotics was founded by Maria Keller in 1998.\n"
    "Engineer Tomas Berg started Bluefin Labs after leaving university.\n"
    'Answer with one JSON object with keys "sentence", "head", "head_type", "tail", '
    '"tail_type", "relation".'
)
GOOD = {
    "sentence": "Greenleaf Analytics was established by Priya Nair in a small garage in Pune.",
    "head": "Greenleaf Analytics",
    "head_type": "ORGANIZATION",
    "tail": "Priya Nair",
    "tail_type": "PERSON",
    "relation": "org:founded_by",
}
GOOD_TOKENS = ("Greenleaf", "Analytics", "was", "established", "by", "Priya", "Nair", "in", "a",
               "small", "garage", "in", "Pune", ".")


def cand(**changes: object) -> str:
    """The good candidate as JSON text, with keys changed (a value of ... deletes the key)."""
    row = {**GOOD, **changes}
    return json.dumps({key: value for key, value in row.items() if value is not ...})


def check(text: str, schema: RelationSchema = FOUNDED, seen: set[str] | None = None,
          limits: Limits | None = None, request_id: str = "r1") -> tuple[Instance | None, str]:
    return check_candidate(text, schema, DEMOS, PROMPT, set() if seen is None else seen,
                           limits=limits or Limits(), request_id=request_id)


# --- accepted candidates: exact instances -------------------------------------------------------

def test_accepted_candidate_is_exact() -> None:
    seen: set[str] = set()
    inst, reason = check(cand(), seen=seen, request_id="gen-7")
    assert reason == ACCEPTED
    assert inst == Instance(
        id="gen-7", tokens=GOOD_TOKENS,
        head=Span(0, 2, "Greenleaf Analytics", "ORGANIZATION"),
        tail=Span(5, 7, "Priya Nair", "PERSON"),
        relation="org:founded_by", source="llm")
    assert inst.source == "llm"
    assert seen == {"greenleaf analytics was established by priya nair in a small garage in pune"}


def test_id_without_request_id_is_a_stable_hash_of_the_normalized_sentence() -> None:
    first, _ = check(cand(), request_id="")
    again, _ = check(cand(sentence="GREENLEAF Analytics was established by Priya Nair in a "
                                   "small garage in Pune !", head="GREENLEAF Analytics"),
                     request_id="")
    other, _ = check(cand(sentence="Greenleaf Analytics was established by Priya Nair in Goa."),
                     request_id="")
    assert first is not None and again is not None and other is not None
    assert first.id.startswith("llm-") and len(first.id) == 20
    assert first.id == again.id != other.id


def test_json_in_fences_with_prose_around() -> None:
    text = ("Sure! Here is a new example for you:\n```json\n" + json.dumps(GOOD, indent=2)
            + "\n```\nI hope this helps {not json} and more text")
    inst, reason = check(text)
    assert reason == ACCEPTED and inst is not None and inst.tokens == GOOD_TOKENS


def test_several_json_objects_first_with_sentence_wins() -> None:
    second = cand(sentence="Priya Nair set up Greenleaf Analytics with two friends in Pune.")
    text = '{"note": "draft"} ' + cand() + "\n" + second + " trailing }{ junk"
    inst, reason = check(text)
    assert reason == ACCEPTED and inst is not None and inst.tokens == GOOD_TOKENS


def test_relation_spelling_is_trimmed_and_case_folded_and_may_be_missing() -> None:
    assert check(cand(relation="  ORG:Founded_By "))[1] == ACCEPTED
    inst, reason = check(cand(relation=...))
    assert reason == ACCEPTED and inst is not None and inst.relation == "org:founded_by"


def test_allowed_types_with_other_spelling_get_the_canonical_type() -> None:
    inst, reason = check(cand(head_type="organization", tail_type=" Person "))
    assert reason == ACCEPTED and inst is not None
    assert (inst.head.type, inst.tail.type) == ("ORGANIZATION", "PERSON")
    text = json.dumps({"sentence": "Greenleaf Analytics has its headquarters in Tamil Nadu.",
                       "head": "Greenleaf Analytics", "head_type": "Organization",
                       "tail": "Tamil Nadu", "tail_type": "state or_Province",
                       "relation": "org:stateorprovince_of_headquarters"})
    inst, reason = check(text, schema=HQ_STATE)
    assert reason == ACCEPTED and inst is not None
    assert inst.tail == Span(6, 8, "Tamil Nadu", "STATE_OR_PROVINCE")


def test_schema_without_types_accepts_any_type_and_sets_none() -> None:
    text = json.dumps({"sentence": "The heavy storm caused a long power outage downtown.",
                       "head": "power outage", "head_type": "WHATEVER", "tail": "storm",
                       "relation": "cause-effect(e1,e2)"})
    inst, reason = check(text, schema=UNTYPED)
    assert reason == ACCEPTED and inst is not None
    assert inst.head == Span(6, 8, "power outage", None)
    assert inst.tail == Span(2, 3, "storm", None)
    assert inst.relation == "Cause-Effect(e1,e2)"


# --- rejected candidates: one reason each -------------------------------------------------------

LONG_BASE = "Greenleaf Analytics was established by Priya Nair in Pune "  # 9 words

HOSTILE = [
    ("empty text", "", "unparseable"),
    ("blank text", "   \n ", "unparseable"),
    ("prose only", "I cannot write that sentence, sorry.", "unparseable"),
    ("broken json", '{"sentence": "Greenleaf Analytics was established, "head": ', "unparseable"),
    ("python dict", str(GOOD), "unparseable"),
    ("json list", json.dumps([GOOD]).replace("{", "(").replace("}", ")"), "unparseable"),
    ("head not a string", cand(head=["Greenleaf Analytics"]), "unparseable"),
    ("tail missing", cand(tail=...), "unparseable"),
    ("sentence null", cand(sentence=None), "unparseable"),
    ("blank sentence", cand(sentence="  \t "), "empty_sentence"),
    ("wrong relation", cand(relation="per:employee_of"), "wrong_relation"),
    ("null relation", cand(relation=None), "wrong_relation"),
    ("head type wrong", cand(head_type="PERSON"), "head_type_not_allowed"),
    ("head type missing", cand(head_type=...), "head_type_not_allowed"),
    ("tail type wrong", cand(tail_type="LOCATION"), "tail_type_not_allowed"),
    ("tail type not a string", cand(tail_type=["PERSON"]), "tail_type_not_allowed"),
    ("too short", cand(sentence="Priya founded Greenleaf.", head="Greenleaf", tail="Priya"),
     "too_short"),
    ("punctuation is not words", cand(sentence="Priya founded Greenleaf , , - ; !",
                                      head="Greenleaf", tail="Priya"), "too_short"),
    ("too long", cand(sentence=LONG_BASE + " ".join(["again"] * 52)), "too_long"),
    ("verbatim demonstration", cand(sentence="Acme Robotics was founded by Maria Keller in 1998.",
                                    head="Acme Robotics", tail="Maria Keller"),
     "copies_demonstration"),
    ("re-cased demonstration", cand(sentence="ACME robotics was founded by Maria Keller in 1998 !",
                                    head="ACME robotics", tail="Maria Keller"),
     "copies_demonstration"),
    ("near-copy demonstration", cand(sentence="Acme Robotics was founded by Maria Keller in 1999.",
                                     head="Acme Robotics", tail="Maria Keller"),
     "copies_demonstration"),
    ("echoed prompt", cand(sentence="The head entity must be an organization and the tail "
                                    "entity must be a person", head="organization",
                           tail="person"), "copies_prompt"),
    ("head absent", cand(head="Bluefin Labs"), "head_not_in_sentence"),
    ("tail absent", cand(tail="Maria Keller"), "tail_not_in_sentence"),
    ("tail only inside a larger token",
     cand(sentence="Annabel Stone founded Northwind Partners in Oslo last spring.",
          head="Northwind Partners", tail="Ann"), "tail_not_in_sentence"),
    ("head only as a prefix of a hyphenated token",
     cand(sentence="The Northwind-based firm was founded by Annabel Stone in Oslo.",
          head="Northwind", tail="Annabel Stone"), "head_not_in_sentence"),
    ("tail inside head", cand(sentence="Jordan Foods was started in Austin last year.",
                              head="Jordan Foods", tail="Foods"), "entities_overlap"),
    ("head equals tail", cand(head="Priya Nair"), "entities_overlap"),
    # The order of checks decides which reason a candidate with several faults gets.
    ("relation before types", cand(relation="per:title", head_type="PERSON"), "wrong_relation"),
    ("length before copies", cand(sentence="Acme Robotics.", head="Acme Robotics"), "too_short"),
    ("copies before entities", cand(sentence="Acme Robotics was founded by Maria Keller in 1998.",
                                    head="Nobody Inc", tail="No One"), "copies_demonstration"),
]


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in HOSTILE],
                         ids=[row[0] for row in HOSTILE])
def test_hostile_outputs_are_rejected_with_their_reason(text: str, expected: str) -> None:
    seen: set[str] = set()
    inst, reason = check(text, seen=seen)
    assert (inst, reason) == (None, expected)
    assert reason in REJECT_REASONS
    assert seen == set()  # a rejected candidate never blocks a later good one


def test_length_bounds_are_inclusive() -> None:
    five = cand(sentence="Priya Nair founded Greenleaf Analytics.")
    assert check(five)[1] == ACCEPTED
    assert check(cand(sentence=LONG_BASE + " ".join(["again"] * 51)))[1] == ACCEPTED
    assert check(five, limits=Limits(min_words=6))[1] == "too_short"
    assert check(cand(), limits=Limits(max_words=10))[1] == "too_long"


def test_near_copy_threshold_is_configurable() -> None:
    # Token-set Jaccard with the first demonstration is 8 / 10 = 0.8.
    text = cand(sentence="Acme Robotics was founded by Maria Keller in 1999.",
                head="Acme Robotics", tail="Maria Keller")
    assert check(text)[1] == "copies_demonstration"
    assert check(text, limits=Limits(near_copy_jaccard=0.81))[1] == ACCEPTED


def test_prompt_echo_is_matched_on_whole_words_only() -> None:
    # "he entity must be ..." is a character substring of "the entity must be ..." only.
    text = cand(sentence="he entity must be a person who created it", head="he entity",
                tail="person")
    assert check(text)[1] == ACCEPTED


def test_duplicates_are_rejected_after_the_first_acceptance() -> None:
    seen: set[str] = set()
    assert check(cand(), seen=seen)[1] == ACCEPTED
    assert check(cand(), seen=seen) == (None, "duplicate")
    respelled = cand(sentence="greenleaf analytics was  established by Priya Nair, in a small "
                              "garage in Pune!", head="greenleaf analytics")
    assert check(respelled, seen=seen) == (None, "duplicate")
    assert len(seen) == 1


def test_a_rejected_sentence_can_be_accepted_later() -> None:
    seen: set[str] = set()
    assert check(cand(tail="Maria Keller"), seen=seen)[1] == "tail_not_in_sentence"
    assert check(cand(), seen=seen)[1] == ACCEPTED


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(min_words=10, max_words=5)
    with pytest.raises(ValueError):
        Limits(near_copy_jaccard=0.0)


# --- entity location: exact token spans, no off-by-one ------------------------------------------

def spans(sentence: str, head: str, tail: str) -> tuple[Span, Span]:
    located = locate_entities(sentence, head, tail)
    assert not isinstance(located, str), located
    tokens, _ = tokenize_with_offsets(sentence)
    for span in located:  # the invariant the original code broke: text == tokens[start:end]
        assert span.text == " ".join(tokens[span.start:span.end])
    return located


def test_entities_at_the_very_start_and_very_end() -> None:
    head, tail = spans("Maria Keller started the company that became Acme Robotics",
                       "Acme Robotics", "Maria Keller")
    assert head == Span(7, 9, "Acme Robotics")  # 9 tokens: the span ends at len(tokens)
    assert tail == Span(0, 2, "Maria Keller")


def test_multi_token_entities_next_to_punctuation() -> None:
    sentence = "In 2001, (Acme Robotics) was founded by Dr. Maria Keller-Smith."
    assert tokenize_with_offsets(sentence)[0] == [
        "In", "2001", ",", "(", "Acme", "Robotics", ")", "was", "founded", "by", "Dr", ".",
        "Maria", "Keller-Smith", "."]
    head, tail = spans(sentence, "Acme Robotics", "Maria Keller-Smith")
    assert head == Span(4, 6, "Acme Robotics")
    assert tail == Span(12, 14, "Maria Keller-Smith")
    _, titled = spans(sentence, "(Acme Robotics)", "Dr. Maria Keller-Smith")
    assert titled == Span(10, 14, "Dr . Maria Keller-Smith")


def test_entity_twice_with_the_first_occurrence_inside_the_other_entity() -> None:
    head, tail = spans("Jordan Foods was founded by Jordan in Austin last year.",
                       "Jordan Foods", "Jordan")
    assert head == Span(0, 2, "Jordan Foods")
    assert tail == Span(5, 6, "Jordan")
    inst, reason = check(cand(sentence="Jordan Foods was founded by Jordan in Austin last year.",
                              head="Jordan Foods", tail="Jordan"))
    assert reason == ACCEPTED and inst is not None
    assert inst.tail == Span(5, 6, "Jordan", "PERSON")


def test_sub_token_match_is_skipped_for_a_later_whole_token() -> None:
    _, tail = spans("Annabel and Ann founded Northwind Partners together.",
                    "Northwind Partners", "Ann")
    assert tail == Span(2, 3, "Ann")


def test_exact_case_is_preferred_then_case_insensitive() -> None:
    head, _ = spans("ACME staff say Acme was founded by Maria Keller.", "Acme", "Maria Keller")
    assert head == Span(3, 4, "Acme")
    head, tail = spans("Acme Robotics was founded by Maria Keller.", "acme ROBOTICS",
                       "maria keller")
    assert (head, tail) == (Span(0, 2, "Acme Robotics"), Span(5, 7, "Maria Keller"))


def test_whitespace_inside_entities_is_flexible() -> None:
    head, tail = spans("Acme   Robotics was founded by Maria\nKeller.", " Acme Robotics ",
                       "Maria  Keller")
    assert (head, tail) == (Span(0, 2, "Acme Robotics"), Span(5, 7, "Maria Keller"))


@pytest.mark.parametrize(("head", "tail", "reason"), [
    ("Northwind", "Ann", "head_not_in_sentence"),
    ("", "Ann", "head_not_in_sentence"),
    ("Annabel Stone", "Ann", "tail_not_in_sentence"),
    ("Annabel Stone", "Stone", "entities_overlap"),
])
def test_locate_entities_reasons(head: str, tail: str, reason: str) -> None:
    assert locate_entities("Annabel Stone founded Northwind-Partners.", head, tail) == reason


# --- parsing helpers ---------------------------------------------------------------------------

def test_extract_json_object() -> None:
    assert extract_json_object("") is None
    assert extract_json_object("no braces here") is None
    assert extract_json_object('{"sentence": "unterminated') is None
    assert extract_json_object("[1, 2, 3]") is None
    assert extract_json_object('x {"a": 1} {"b": 2}') == {"a": 1}
    assert extract_json_object('{"a": 1} {"sentence": "s1"} {"sentence": "s2"}') == {
        "sentence": "s1"}
    assert extract_json_object('{"output": {"sentence": "inner"}, "bad": }') == {
        "sentence": "inner"}
    assert extract_json_object('```json\n{"sentence": "line one\nline two"}\n```') == {
        "sentence": "line one\nline two"}


def test_normalize() -> None:
    assert normalize('  Hello,   WORLD!\n It\'s  "fine" -- U.S. ') == "hello world it's fine u.s"
    assert normalize("...!?") == ""


# --- explanations ------------------------------------------------------------------------------

FOUNDER = DEMOS[0]  # head "Acme Robotics", tail "Maria Keller"


@pytest.mark.parametrize(("text", "expected"), [
    ("Maria Keller founded Acme Robotics in 1998, so the company was founded by her.",
     "Maria Keller founded Acme Robotics in 1998, so the company was founded by her."),
    ("  Acme   Robotics was\nfounded by maria KELLER, its first CEO.  ",
     "Acme Robotics was founded by maria KELLER, its first CEO."),
    ("Sure, here is the explanation:\nMaria Keller founded Acme Robotics in 1998.",
     "Maria Keller founded Acme Robotics in 1998."),
    # The rest after the "preamble" fails alone, so the whole text is judged and kept.
    ("Sure, Acme Robotics was founded by Maria Keller.\nIn 1998.",
     "Sure, Acme Robotics was founded by Maria Keller. In 1998."),
])
def test_explanation_accepted(text: str, expected: str) -> None:
    assert check_explanation(text, FOUNDER) == (expected, ACCEPTED)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    (" \n\t ", "empty"),
    ("Acme Robotics, Maria Keller.", "too_short"),
    ("Maria Keller founded the company in 1998 in a garage.", "missing_head"),
    ("Acme Robotics was founded in 1998 by a young engineer.", "missing_tail"),
    ("Acme Roboticsx was founded by Maria Keller in 1998.", "missing_head"),
    ("Sure, here is the explanation:\n", "missing_head"),
])
def test_explanation_rejected(text: str, reason: str) -> None:
    assert check_explanation(text, FOUNDER) == (None, reason)
    assert reason in EXPLANATION_REJECT_REASONS


def test_explanation_min_words_and_gold_tokens_from_another_tokeniser() -> None:
    assert check_explanation("Maria Keller founded Acme Robotics", FOUNDER)[1] == ACCEPTED
    assert check_explanation("Maria Keller founded Acme Robotics", FOUNDER,
                             min_words=6) == (None, "too_short")
    # A gold token like "U.S." (TACRED) is re-tokenised the same way as the explanation.
    gold = Instance(id="g1", tokens=("The", "U.S.", "Army", "hired", "Lee", "."),
                    head=Span(4, 5, ""), tail=Span(1, 3, ""), relation="per:employee_of")
    text = "Lee works for the U.S. Army, which hired him."
    assert check_explanation(text, gold) == (text, ACCEPTED)


def test_explanation_spans_sit_on_token_boundaries() -> None:
    """Offsets of the entities inside an explanation (issue 13's cases): no match inside a
    longer word, SemEval's space-separated tokens found in normally written text."""
    car = Instance(id="c1", tokens=("The", "car", "hit", "the", "scarf", "."),
                   head=Span(1, 2, "car"), tail=Span(4, 5, "scarf"), relation="r")
    text = "A scarf was hit because the car swerved into the scarf."
    (head, tail) = explanation_spans(text, car)
    assert text[head[0]:head[1]] == "car" and head[0] == text.index(" car ") + 1
    assert text[tail[0]:tail[1]] == "scarf" and tail[0] == 2
    army = Instance(id="a1", tokens=("the", "U.S", ".", "Army", "hired", "Lee"),
                    head=Span(5, 6, "Lee"), tail=Span(1, 4, "U.S . Army"), relation="r")
    text = "Lee was hired by the U.S. Army in 2001."
    assert check_explanation(text, army) == (text, ACCEPTED)
    (head, tail) = explanation_spans(text, army)
    assert text[head[0]:head[1]] == "Lee" and text[tail[0]:tail[1]] == "U.S. Army"
    # case-insensitive; an entity written only inside the other gives no pair
    assert explanation_spans("lee and the u.s. army", army) is not None
    nested = Instance(id="n1", tokens=("New", "York", "City", "near", "York"),
                      head=Span(0, 3, "New York City"), tail=Span(4, 5, "York"), relation="r")
    assert explanation_spans("New York City is big.", nested) is None
