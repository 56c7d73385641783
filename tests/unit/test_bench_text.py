"""The raw-text bench figures (tkre.bench.text): which mention stands for a gold entity, and how
pair recall, end-to-end recall, triples per sentence and no-relation silence are counted."""

from __future__ import annotations

from tkre.bench.text import (
    plain_texts,
    registration_examples,
    reversed_label,
    score_documents,
    stands_for,
)
from tkre.schema import Instance, Span


def arg(start: int, end: int) -> dict:
    return {"start": start, "end": end, "text": "", "type": None}


def triple(head: tuple[int, int], tail: tuple[int, int], relation: str) -> dict:
    return {"head": arg(*head), "tail": arg(*tail), "relation": relation, "score": 0.9}


def test_a_noun_chunk_stands_for_its_head_noun_only():
    # "the burst" (0..9) for gold "burst" (4..9); "burst pipe" (4..14) is another nominal
    assert stands_for(0, 9, (4, 9)) and stands_for(4, 9, (4, 9))
    assert not stands_for(4, 14, (4, 9)) and not stands_for(5, 9, (4, 9))


def test_reversed_label_swaps_the_direction_of_directed_labels_only():
    assert reversed_label("Cause-Effect(e1,e2)") == "Cause-Effect(e2,e1)"
    assert reversed_label("Cause-Effect(e2,e1)") == "Cause-Effect(e1,e2)"
    assert reversed_label("Other") is None and reversed_label("P17") is None


def test_scores_each_document_against_its_gold_pair():
    e1, e2, far = (0, 5), (10, 15), (20, 25)
    golds = [(e1, e2, "Cause-Effect(e1,e2)"),   # found, right relation
             (e1, e2, "Cause-Effect(e1,e2)"),   # found, emitted the other way round, reversed
             (e1, e2, "Cause-Effect(e1,e2)"),   # found, wrong direction of the label
             (e1, e2, "Other"),                 # found, silent on the pair
             (e1, e2, "Other"),                 # a triple on the pair: not silent
             (e1, e2, "Component-Whole(e1,e2)")]  # never a candidate
    candidates = [[(arg(*e1), arg(*e2))], [(arg(*e2), arg(*e1))], [(arg(*e1), arg(*e2))],
                  [(arg(*e1), arg(*e2))], [(arg(*e2), arg(*e1))], [(arg(*e1), arg(*far))]]
    triples = [[triple(e1, e2, "Cause-Effect(e1,e2)"), triple(e1, far, "Other-Thing")],
               [triple(e2, e1, "Cause-Effect(e2,e1)")],
               [triple(e1, e2, "Cause-Effect(e2,e1)")],
               [triple(e1, far, "Message-Topic(e1,e2)")],
               [triple(e2, e1, "Message-Topic(e1,e2)")],
               []]
    out = score_documents(golds, candidates, triples, "Other")
    assert out["sentences"] == 6 and out["pair_recall"] == 5 / 6
    assert out["related_sentences"] == 4 and out["end_to_end_recall"] == 2 / 4
    assert out["no_relation_sentences"] == 2 and out["no_relation_silence"] == 1 / 2
    assert out["triples_per_sentence"] == 6 / 6


def test_relations_the_model_does_not_know_count_for_candidates_only():
    out = score_documents([((0, 5), (10, 15), None)], [[(arg(0, 5), arg(10, 15))]],
                          [[triple((0, 5), (10, 15), "Other-Thing")]], "Other")
    assert out["pair_recall"] == 1.0 and out["end_to_end_recall"] is None
    assert out["no_relation_silence"] is None and out["triples_per_sentence"] == 1.0


def test_plain_texts_carry_the_gold_character_spans():
    inst = Instance(id="1", tokens=("The", "burst", "caused", "a", "flood", "."),
                    head=Span(1, 2, "burst"), tail=Span(4, 5, "flood"),
                    relation="Cause-Effect(e1,e2)")
    [(text, head, tail)] = plain_texts([inst])
    assert text == "The burst caused a flood ."
    assert text[slice(*head)] == "burst" and text[slice(*tail)] == "flood"


def test_registration_examples_stay_outside_the_measured_sentences():
    def inst(i: int, relation: str) -> Instance:
        return Instance(id=f"{relation}-{i}", tokens=("a", "b", "c"), head=Span(0, 1, "a"),
                        tail=Span(2, 3, "c"), relation=relation)

    relations = {name: [inst(i, name) for i in range(10)] for name in ("P17", "P31")}
    held_out = relations["P17"][:6] + relations["P31"][3:4]
    examples = registration_examples(relations, held_out, shots=5, seed=7)
    assert sorted(examples) == ["P17", "P31"]
    # P17 has 4 sentences left: all of them, none measured; P31 gets 5 of its 9
    assert sorted(e.id for e in examples["P17"]) == [f"P17-{i}" for i in range(6, 10)]
    assert len(examples["P31"]) == 5 and "P31-3" not in {e.id for e in examples["P31"]}
    assert examples == registration_examples(relations, held_out, shots=5, seed=7)
    # `fits` drops what the model cannot encode
    fewer = registration_examples(relations, held_out, 5, 7,
                                  fits=lambda e: e.id in {"P31-0", "P31-1"})
    assert fewer["P17"] == [] and sorted(e.id for e in fewer["P31"]) == ["P31-0", "P31-1"]
