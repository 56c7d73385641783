"""Knowledge artifacts written directly (no LLM), so pre-training tests start in seconds."""

from __future__ import annotations

import pyarrow as pa

from tkre import storage
from tkre.data import readers
from tkre.knowledge.job import EXPLANATION_SCHEMA
from tkre.schema import Instance


def explanation_row(inst: Instance, index: int) -> dict:
    """An explanation in the EDKG style, with the entities' character offsets."""
    head, tail = inst.head.text, inst.tail.text
    text = (f"The text says that {head} holds the relation {inst.relation} with {tail}, "
            f"because the sentence states it directly.")
    head_start = text.index(head)
    tail_start = text.index(tail, head_start + len(head))
    return {"id": f"x{index}", "instance_id": inst.id, "relation": inst.relation, "text": text,
            "head": head, "tail": tail, "head_start": head_start,
            "head_end": head_start + len(head), "tail_start": tail_start,
            "tail_end": tail_start + len(tail), "model": "fixture", "prompt_hash": "-"}


def write_knowledge(root: str, train: list[Instance], synthetic: int = 8) -> None:
    """explanations.parquet from every K-shot example, a few 'synthetic' copies, stats.json."""
    knowledge = storage.join(root, "knowledge")
    rows = [explanation_row(inst, i) for i, inst in enumerate(train)]
    storage.write_table(storage.join(knowledge, "explanations.parquet"),
                        pa.Table.from_pylist(rows, schema=EXPLANATION_SCHEMA))
    fake = [Instance(f"syn{i}", inst.tokens, inst.head, inst.tail, inst.relation, source="llm")
            for i, inst in enumerate(train[:synthetic])]
    fs, path = storage.arrow_filesystem(storage.join(knowledge, "synthetic.parquet"))
    readers.write_parquet(fake, path, filesystem=fs)
    storage.write_json(storage.join(knowledge, "stats.json"), {"fixture": True})
