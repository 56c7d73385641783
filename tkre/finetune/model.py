"""The relation classifier: encoder states at the two start markers, concatenated, into an MLP.

Saved as a folder: `encoder/` (a plain transformers model + tokenizer, loadable on its own),
`head.safetensors`, `tkre_model.json` (labels, no-relation label, marker format, max length) and
`reference.safetensors` (the normalised pair embeddings and labels of the K-shot train + dev
sentences, which run-time relations are held against: `tkre.extract.references`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from tkre import layout
from tkre.finetune.markers import Encoded, encode
from tkre.schema import Instance

META_FILE = layout.MODEL_META_FILE  # its presence marks a complete model folder
HEAD_FILE = "head.safetensors"
REFERENCE_FILE = layout.MODEL_REFERENCE_FILE


@dataclass
class ModelMeta:
    labels: list[str]
    no_relation: str
    typed_markers: bool
    max_length: int
    encoder_source: str = ""
    dropout: float = 0.1

    @property
    def label_to_id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


def pair_embedding(encoder: nn.Module, input_ids, attention_mask, head_pos, tail_pos
                   ) -> torch.Tensor:
    """[h_@ ; h_#]: the encoder states at the two start markers, concatenated. The classifier's
    input, and the vector run-time relations are compared by (`tkre.extract`), so both always
    see the same representation."""
    states = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(states.size(0), device=states.device)
    return torch.cat([states[rows, head_pos], states[rows, tail_pos]], dim=-1)


class RelationClassifier(nn.Module):
    """[h_@ ; h_#] -> Linear(2H, H) -> ReLU -> Dropout -> Linear(H, C); owns its loss."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_labels))

    def forward(self, input_ids, attention_mask, head_pos, tail_pos, labels=None):
        pairs = pair_embedding(self.encoder, input_ids, attention_mask, head_pos, tail_pos)
        logits = self.head(pairs)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return logits, loss


def load_encoder(path: str | Path) -> nn.Module:
    """A transformers encoder without its pooler: the classifier never uses it, and unused
    parameters would stall DDP's gradient all-reduce."""
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler option
        return AutoModel.from_pretrained(path)


def collate(batch: list[Encoded], pad_id: int, labels: list[int] | None = None
            ) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (not to a fixed length)."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, :len(item.input_ids)] = torch.tensor(item.input_ids)
        attention_mask[row, :len(item.input_ids)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask,
           "head_pos": torch.tensor([item.head_pos for item in batch]),
           "tail_pos": torch.tensor([item.tail_pos for item in batch])}
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


def length_batches(encoded: Sequence[Encoded], pad_id: int, batch_size: int
                   ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(input indices, padded tensors) in batches of similar length, so little is padding;
    callers put each row back at its input index."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        yield indices, collate([encoded[i] for i in indices], pad_id)


@torch.inference_mode()
def embed_pairs(encoder: nn.Module, tokenizer, instances: Sequence[Instance], typed: bool,
                max_length: int, batch_size: int = 64) -> torch.Tensor:
    """[N, 2H] L2-normalised pair embeddings, in input order, on the CPU."""
    encoded = [encode(tokenizer, inst, typed, max_length) for inst in instances]
    device = next(encoder.parameters()).device
    out = torch.empty(len(encoded), 2 * encoder.config.hidden_size)
    for indices, tensors in length_batches(encoded, tokenizer.pad_token_id, batch_size):
        tensors = {k: v.to(device) for k, v in tensors.items()}
        pairs = pair_embedding(encoder, **tensors)
        out[torch.tensor(indices)] = F.normalize(pairs.float(), dim=-1).cpu()
    return out


@torch.inference_mode()
def predict_proba(model: RelationClassifier, tokenizer, meta: ModelMeta,
                  instances: list[Instance], batch_size: int = 64) -> torch.Tensor:
    """Class probabilities, one row per instance, in input order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, inst, meta.typed_markers, meta.max_length) for inst in instances]
    probs = torch.empty(len(encoded), len(meta.labels))
    for indices, tensors in length_batches(encoded, tokenizer.pad_token_id, batch_size):
        logits, _ = model(**{k: v.to(device) for k, v in tensors.items()})
        probs[torch.tensor(indices)] = logits.float().softmax(-1).cpu()
    model.train(was_training)
    return probs


def save_classifier(model: RelationClassifier, tokenizer, meta: ModelMeta, out_dir: str | Path,
                    references: Sequence[Instance] = ()) -> None:
    """The model folder; with `references` (sentences of the trained labels), their pair
    embeddings too."""
    out = Path(out_dir)
    (out / "encoder").mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(out / HEAD_FILE))
    if references:
        save_references(model.encoder, tokenizer, meta, references, out)
    (out / META_FILE).write_text(json.dumps(asdict(meta), indent=2))


def save_references(encoder: nn.Module, tokenizer, meta: ModelMeta,
                    references: Sequence[Instance], out_dir: str | Path) -> None:
    """REFERENCE_FILE: the references' normalised pair embeddings and label ids (those of
    labels the model does not have are left out)."""
    ids = meta.label_to_id
    kept = [inst for inst in references if inst.relation in ids]
    embeddings = embed_pairs(encoder.eval(), tokenizer, kept, meta.typed_markers,
                             meta.max_length)
    save_file({"embeddings": embeddings.contiguous(),
               "label_ids": torch.tensor([ids[inst.relation] for inst in kept],
                                         dtype=torch.long)},
              str(Path(out_dir) / REFERENCE_FILE))


def load_references(model_dir: str | Path, meta: ModelMeta
                    ) -> tuple[torch.Tensor, list[str]] | None:
    """(normalised embeddings [N, 2H], their labels) from REFERENCE_FILE; None without one."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    tensors = load_file(str(path))
    return tensors["embeddings"], [meta.labels[i] for i in tensors["label_ids"].tolist()]


def load_classifier(model_dir: str | Path, device: str = "cpu"
                    ) -> tuple[RelationClassifier, object, ModelMeta]:
    folder = Path(model_dir)
    if not (folder / META_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no trained tkre model ({META_FILE} missing): "
                                "run jobs/finetune.py first")
    meta = ModelMeta(**json.loads((folder / META_FILE).read_text()))
    tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    encoder = load_encoder(folder / "encoder")
    model = RelationClassifier(encoder, len(meta.labels), meta.dropout)
    model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return model.to(device).eval(), tokenizer, meta
