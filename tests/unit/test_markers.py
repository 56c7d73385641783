"""Entity markers: exact word sequences, start indices, sub-token positions, truncation."""

import pytest

from tests.tiny import make_tiny_encoder
from tkre.finetune.markers import encode, encode_many, mark_words
from tkre.schema import Instance, Span

INST = Instance(
    id="m1", tokens=("Bill", "Gates", "founded", "Microsoft", "in", "Albuquerque", "."),
    head=Span(3, 4, "Microsoft", "ORGANIZATION"), tail=Span(0, 2, "Bill Gates", "PERSON"),
    relation="org:founded_by")


def test_typed_markers_exact_sequence_tail_first():
    words, head, tail = mark_words(INST, typed=True)
    assert words == ["#", "^", "person", "^", "Bill", "Gates", "#", "founded",
                     "@", "*", "organization", "*", "Microsoft", "@", "in", "Albuquerque", "."]
    assert (head, tail) == (8, 0)
    assert words[head] == "@" and words[tail] == "#"


def test_untyped_markers_and_underscored_types():
    words, head, tail = mark_words(INST, typed=False)
    assert words == ["#", "Bill", "Gates", "#", "founded", "@", "Microsoft", "@", "in",
                     "Albuquerque", "."]
    assert (head, tail) == (5, 0)
    state = Instance(id="m2", tokens=("Ann", "lives", "in", "Ohio"),
                     head=Span(0, 1, "Ann", "PERSON"),
                     tail=Span(3, 4, "Ohio", "STATE_OR_PROVINCE"), relation="r")
    words, head, tail = mark_words(state, typed=True)
    assert words == ["@", "*", "person", "*", "Ann", "@", "lives", "in",
                     "#", "^", "state", "or", "province", "^", "Ohio", "#"]
    assert (head, tail) == (0, 8)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_encoder(tmp_path_factory.mktemp("tiny")))


def test_encode_positions_point_at_start_markers(tokenizer):
    enc = encode(tokenizer, INST, typed=True, max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[enc.head_pos] == "@" and tokens[enc.tail_pos] == "#"
    assert enc.tail_pos == 1  # the tail comes first, right after [CLS]


def test_encode_long_sentence_keeps_both_markers_in_window(tokenizer):
    filler = tuple(["the"] * 200)
    long = Instance(id="long", tokens=filler + ("Ann", "met", "Bob") + filler,
                    head=Span(200, 201, "Ann"), tail=Span(202, 203, "Bob"), relation="r")
    enc = encode(tokenizer, long, typed=False, max_length=32)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert len(enc.input_ids) == 32
    assert tokens[enc.head_pos] == "@" and tokens[enc.tail_pos] == "#"
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"


def test_encode_refuses_entities_further_apart_than_max_length(tokenizer):
    far = Instance(id="far", tokens=("Ann",) + ("the",) * 100 + ("Bob",),
                   head=Span(0, 1, "Ann"), tail=Span(101, 102, "Bob"), relation="r")
    with pytest.raises(ValueError, match="instance far"):
        encode(tokenizer, far, typed=False, max_length=32)


def test_encode_many_equals_encode_one_at_a_time(tokenizer):
    # batched tokenisation (raw text's candidate pairs) gives exactly what `encode` gives, in
    # order, across chunk boundaries, with None where `encode` refuses
    filler = tuple(["the"] * 200)
    long = Instance(id="long", tokens=filler + ("Ann", "met", "Bob") + filler,
                    head=Span(200, 201, "Ann"), tail=Span(202, 203, "Bob"), relation="r")
    far = Instance(id="far", tokens=("Ann",) + ("the",) * 100 + ("Bob",),
                   head=Span(0, 1, "Ann"), tail=Span(101, 102, "Bob"), relation="r")
    instances = [INST, long, far, INST, long]
    for typed in (True, False):
        many = encode_many(tokenizer, instances, typed, max_length=32, chunk=2)
        assert many[2] is None
        for inst, got in zip(instances, many, strict=True):
            if got is not None:
                assert got == encode(tokenizer, inst, typed, max_length=32)
