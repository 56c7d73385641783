"""Each stage's training texts, from the run root's artifacts.

Stage 1 (MSLM): the EDKG explanations (and, configurable, the SCDG sentences). Stage 2 (MSLM +
SCL): labelled text -- the synthetic sentences, the K-shot gold set and the explanations, each
with its relation. Sentences given as tokens are joined with single spaces and their token spans
become character spans, so every text reaches the tokenizer with character offsets.
"""

from __future__ import annotations

from tkre import layout, storage
from tkre.data import readers
from tkre.pretrain.masking import TextExample
from tkre.schema import DataError, Instance


def from_instance(inst: Instance) -> TextExample:
    starts, position = [], 0
    for token in inst.tokens:
        starts.append(position)
        position += len(token) + 1

    def chars(start: int, end: int) -> tuple[int, int]:
        return starts[start], starts[end - 1] + len(inst.tokens[end - 1])

    return TextExample(" ".join(inst.tokens), chars(inst.head.start, inst.head.end),
                       chars(inst.tail.start, inst.tail.end), inst.relation)


def explanations(root: str) -> list[TextExample]:
    uri = layout.explanations(root)
    if not storage.exists(uri):
        return []
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(uri)
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    out = []
    for index, row in enumerate(rows):
        head, tail = (row["head_start"], row["head_end"]), (row["tail_start"], row["tail_end"])
        for name, (start, end) in (("head", head), ("tail", tail)):
            if not 0 <= start < end <= len(row["text"]):
                raise DataError(f"character span {start}..{end} is outside the text",
                                file=uri, record=index, field=f"{name}_start")
        out.append(TextExample(row["text"], head, tail, row["relation"]))
    return out


def synthetic(root: str) -> list[Instance]:
    uri = layout.synthetic(root)
    if not storage.exists(uri):
        return []
    fs, path = storage.arrow_filesystem(uri)
    return readers.read_parquet(path, filesystem=fs)


def stage_texts(stage: str, root: str, gold: list[Instance], mslm_synthetic: bool = True,
                use_explanations: bool = True, use_synthetic: bool = True
                ) -> tuple[list[TextExample], dict[str, int]]:
    """The stage's texts and how many came from each source."""
    explained = explanations(root) if use_explanations else []
    generated = [from_instance(inst) for inst in synthetic(root)] if use_synthetic else []
    if stage == "mslm":
        parts = {"explanations": explained,
                 "synthetic": generated if mslm_synthetic else []}
    else:
        parts = {"synthetic": generated, "gold": [from_instance(inst) for inst in gold],
                 "explanations": explained}
    texts = [text for part in parts.values() for text in part]
    return texts, {name: len(part) for name, part in parts.items()}


def split_heldout(texts: list[TextExample], explanations_: list[TextExample], every: int
                  ) -> tuple[list[TextExample], list[TextExample]]:
    """(training texts, held-out texts): every `every`-th explanation is held out of stage 1
    to measure its MSLM loss before and after; none when there are fewer than `every`."""
    if not every or len(explanations_) < every:
        return texts, []
    held = explanations_[every - 1::every]
    return [text for text in texts if text not in held], held
