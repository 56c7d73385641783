"""Masked span language modelling (MSLM): token classes from character offsets, batch masking.

Every sub-token gets a class from the character offsets the tokenizer reports, never from
searching sub-token sequences: SPECIAL (special and padding tokens, never masked), ENTITY (inside
the head or tail mention), RELATION (strictly between the two mentions: the relation span) and
OTHER. Collation pads a batch and masks each token independently with the probability of its
class (default 0.8 / 0.5 / 0.2 / 0); every selected token becomes the mask token, and the batch
carries the selected positions (flat indices) and their original ids as the MSLM targets.

Masks are drawn from uniform numbers keyed on the *global* batch (`uniform`), so an example gets
the same mask whichever worker holds it: 1 and N workers see the same training signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPECIAL, OTHER, ENTITY, RELATION = 0, 1, 2, 3
IGNORE = -100  # label of unmasked positions (cross-entropy ignores it)


@dataclass(frozen=True)
class TextExample:
    """A sentence or explanation with its two mentions as character spans (end exclusive)."""

    text: str
    head: tuple[int, int]
    tail: tuple[int, int]
    relation: str | None = None


@dataclass(frozen=True)
class MaskProbs:
    relation: float = 0.8
    entity: float = 0.5
    other: float = 0.2

    def table(self) -> torch.Tensor:
        """Probability indexed by token class."""
        table = torch.zeros(4)
        table[OTHER], table[ENTITY], table[RELATION] = self.other, self.entity, self.relation
        return table


@dataclass
class EncodedText:
    input_ids: list[int]
    classes: list[int]
    relation_id: int = -1  # index into the relation list, -1: none (left out of SCL)


def _overlaps(start: int, end: int, span: tuple[int, int]) -> bool:
    return start < span[1] and span[0] < end


def token_classes(offsets: list[tuple[int, int]], special: list[int], head: tuple[int, int],
                  tail: tuple[int, int]) -> list[int]:
    """The class of each sub-token, from its character offsets."""
    first, second = sorted((head, tail))
    gap = (first[1], second[0])  # the relation span: after the first mention, before the second
    classes = []
    for (start, end), is_special in zip(offsets, special, strict=True):
        if is_special or end <= start:
            classes.append(SPECIAL)
        elif _overlaps(start, end, head) or _overlaps(start, end, tail):
            classes.append(ENTITY)
        elif gap[0] <= start and end <= gap[1]:
            classes.append(RELATION)
        else:
            classes.append(OTHER)
    return classes


def encode_texts(tokenizer, examples: list[TextExample], max_length: int,
                 relation_index: dict[str, int] | None = None) -> list[EncodedText]:
    """Tokenise (with offsets) and classify every sub-token; one batched tokenizer call."""
    enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length,
                    return_offsets_mapping=True, return_special_tokens_mask=True)
    relation_index = relation_index or {}
    out = []
    for i, ex in enumerate(examples):
        classes = token_classes(enc["offset_mapping"][i], enc["special_tokens_mask"][i],
                                ex.head, ex.tail)
        out.append(EncodedText(list(enc["input_ids"][i]), classes,
                               relation_index.get(ex.relation, -1) if ex.relation else -1))
    return out


def pad(batch: list[EncodedText], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, classes), padded to the longest row; padding is class SPECIAL."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    classes = torch.full((len(batch), width), SPECIAL, dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, :len(item.input_ids)] = torch.tensor(item.input_ids)
        classes[row, :len(item.classes)] = torch.tensor(item.classes)
    return input_ids, classes


def mask_tokens(input_ids: torch.Tensor, classes: torch.Tensor, mask_id: int, probs: MaskProbs,
                uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked input ids, positions, labels): token i is masked when uniform[i] < p(class of
    i); `positions` are the masked tokens' indices into the flattened (B * W) batch, in row
    order, and `labels` their original ids. Built here, on the host, so the training step
    needs no boolean indexing (a device-to-host sync on a GPU)."""
    selected = uniform < probs.table()[classes]
    positions = selected.flatten().nonzero().squeeze(1)
    masked = torch.where(selected, torch.full_like(input_ids, mask_id), input_ids)
    return masked, positions, input_ids.flatten()[positions]


def negative_spans(classes: torch.Tensor, count: int, max_len: int, uniform: torch.Tensor
                   ) -> torch.Tensor:
    """(B, count, W) masks of random contiguous runs of OTHER tokens, 1..max_len long.

    `uniform` is (B, count, 2): the first number picks the start among the row's OTHER tokens,
    the second the length. A run stops where the OTHER tokens stop. Rows without OTHER tokens
    get empty masks (the loss leaves empty negatives out).
    """
    other = classes == OTHER  # (B, W)
    available = other.sum(1, keepdim=True)  # (B, 1)
    # the k-th OTHER token of each row, k drawn uniformly
    k = (uniform[..., 0] * available).long().clamp(max=(available - 1).clamp(min=0))  # (B, N)
    rank = other.long().cumsum(1) - 1  # rank of each OTHER token within its row
    is_start = other[:, None, :] & (rank[:, None, :] == k[..., None])  # (B, N, W)
    start = is_start.float().argmax(-1)  # (B, N)
    length = 1 + (uniform[..., 1] * max_len).long().clamp(max=max_len - 1)
    run = (~other).long().cumsum(1)  # tokens of one contiguous OTHER run share a run id
    positions = torch.arange(classes.size(1))
    same_run = run[:, None, :] == run.gather(1, start)[..., None]
    inside = (positions >= start[..., None]) & (positions < (start + length)[..., None])
    return is_start.any(-1, keepdim=True) & other[:, None, :] & same_run & inside


def collate(batch: list[EncodedText], pad_id: int, mask_id: int, probs: MaskProbs,
            uniform: torch.Tensor, negatives: int = 0, negative_max_len: int = 3,
            negative_uniform: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A padded, masked batch with the span masks SCL pools over.

    `uniform` is (len(batch), >= width) and `negative_uniform` (len(batch), negatives, 2), both
    taken from the global batch's draws.
    """
    input_ids, classes = pad(batch, pad_id)
    masked, positions, labels = mask_tokens(input_ids, classes, mask_id, probs,
                                            uniform[:, :input_ids.size(1)])
    lengths = torch.tensor([len(item.input_ids) for item in batch])
    out = {"input_ids": masked,
           "attention_mask": (torch.arange(input_ids.size(1))[None, :] < lengths[:, None]).long(),
           "mlm_positions": positions, "mlm_labels": labels, "relation_mask": classes == RELATION,
           "entity_mask": classes == ENTITY,
           "relation_ids": torch.tensor([item.relation_id for item in batch], dtype=torch.long)}
    if negatives:
        out["negative_mask"] = negative_spans(classes, negatives, negative_max_len,
                                              negative_uniform)
    return out
