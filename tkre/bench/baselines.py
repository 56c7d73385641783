"""The original TKRE code's way of doing a stage, kept only to measure ours against it.

MSLM as released: a transformers Trainer over a masked-LM model, every text padded to 128
sub-tokens, entities located per item by searching the sub-token sequence of the entity string
(first match) inside the encoded text, masks drawn per item, vocabulary logits at every position.
Nothing in the product uses this module; `jobs/bench.py` runs it side by side with ours.
"""

from __future__ import annotations

import tempfile
import time

import torch
from transformers import TrainerCallback

from tkre.pretrain.masking import TextExample

FIXED_LENGTH = 128


def _find(sequence: list[int], part: list[int]) -> int:
    """First index of `part` in `sequence`, or -1 (the released code's sub-token search)."""
    for start in range(len(sequence) - len(part) + 1):
        if part and sequence[start:start + len(part)] == part:
            return start
    return -1


class OriginalMSLMDataset(torch.utils.data.Dataset):
    """Per item: encode padded to 128, search both entities, draw the masks."""

    def __init__(self, tokenizer, examples: list[TextExample], probs=(0.8, 0.5, 0.2)):
        self.tokenizer, self.examples, self.probs = tokenizer, examples, probs

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ex = self.examples[index]
        enc = self.tokenizer(ex.text, padding="max_length", truncation=True,
                             max_length=FIXED_LENGTH)
        ids = enc["input_ids"]
        head = self.tokenizer.encode(ex.text[slice(*ex.head)], add_special_tokens=False)
        tail = self.tokenizer.encode(ex.text[slice(*ex.tail)], add_special_tokens=False)
        h, t = _find(ids, head), _find(ids, tail)
        p_relation, p_entity, p_other = self.probs
        special = set(self.tokenizer.all_special_ids)
        prob = torch.tensor([0.0 if i in special else p_other for i in ids])
        if h >= 0:
            prob[h:h + len(head)] = p_entity
        if t >= 0:
            prob[t:t + len(tail)] = p_entity
        if h >= 0 and t >= 0:
            lo, hi = sorted(((h, len(head)), (t, len(tail))))
            prob[lo[0] + lo[1]:hi[0]] = p_relation
        input_ids = torch.tensor(ids)
        selected = torch.bernoulli(prob).bool()
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        input_ids[selected] = self.tokenizer.mask_token_id
        return {"input_ids": input_ids, "attention_mask": torch.tensor(enc["attention_mask"]),
                "labels": labels}


class _SteadyClock(TrainerCallback):
    """The time at the end of step `warmup` and of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.marks = warmup, {}

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step in (self.warmup, state.max_steps):
            self.marks[state.global_step] = time.perf_counter()
        return control


def run_original_mslm(encoder_dir: str, examples: list[TextExample], steps: int,
                      batch_size: int = 16, lr: float = 2e-5, warmup: int = 0) -> dict:
    """Train MSLM the released way for `warmup` + `steps` steps (fp16 on a GPU, as released).

    `samples_per_s` covers the whole `trainer.train()` call; with `warmup` > 0,
    `steady_samples_per_s` covers only the steps after the first `warmup`.
    """
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModelForMaskedLM.from_pretrained(encoder_dir)
    clock = _SteadyClock(warmup)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size,
                                 max_steps=total, learning_rate=lr, weight_decay=0.01,
                                 report_to=[], save_strategy="no", logging_steps=10**6,
                                 use_cpu=not torch.cuda.is_available(),
                                 fp16=torch.cuda.is_available(),
                                 dataloader_num_workers=0, remove_unused_columns=False,
                                 disable_tqdm=True, seed=42)
        trainer = Trainer(model=model, args=args, callbacks=[clock],
                          train_dataset=OriginalMSLMDataset(tokenizer, examples))
        started = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - started
    result = {"steps": total, "batch_size": batch_size, "wall_s": wall,
              "samples_per_s": total * batch_size / wall,
              "trainer_samples_per_s": output.metrics.get("train_samples_per_second"),
              "final_loss": output.training_loss,
              "precision": "fp16" if torch.cuda.is_available() else "fp32",
              "device": "cuda" if torch.cuda.is_available() else "cpu"}
    if warmup:
        steady = clock.marks[total] - clock.marks[warmup]
        result.update(warmup_steps=warmup, steady_steps=steps,
                      steady_samples_per_s=steps * batch_size / steady)
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def run_original_generation(model_dir: str, conversations: list[list[dict]],
                            max_new_tokens: int, temperature: float = 0.7,
                            top_p: float = 0.95) -> dict:
    """Generate the released way: one transformers text-generation pipeline call per prompt.

    `load_s` is model loading; `wall_s` covers loading and every call (as ours is timed end to
    end, actor start included); generated tokens are the completions re-tokenised.
    """
    from transformers import pipeline

    started = time.perf_counter()
    generator = pipeline("text-generation", model=model_dir, device=0 if torch.cuda.is_available()
                         else -1, dtype=torch.bfloat16 if torch.cuda.is_available()
                         else torch.float32)
    load_s = time.perf_counter() - started
    tokens = 0
    generate_started = time.perf_counter()
    for messages in conversations:
        out = generator(messages, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                        temperature=temperature, top_p=top_p, return_full_text=False)
        text = out[0]["generated_text"]
        if isinstance(text, list):  # chat input: the reply comes back as a message
            text = text[-1]["content"]
        # re-tokenised text can exceed the budget where bytes merge differently; cap it
        tokens += min(max_new_tokens,
                      len(generator.tokenizer(text, add_special_tokens=False)["input_ids"]))
    generate_s = time.perf_counter() - generate_started
    wall = time.perf_counter() - started
    return {"rows": len(conversations), "tokens": tokens, "load_s": load_s,
            "generate_s": generate_s, "wall_s": wall, "rows_per_s": len(conversations) / wall,
            "tokens_per_s": tokens / wall, "tokens_per_s_excluding_load": tokens / generate_s}


def run_plain_finetune(encoder_dir: str, train: list, dev: list, meta, epochs: int,
                       batch_size: int, lr: float, weight_decay: float = 0.01,
                       warmup_ratio: float = 0.1, eps: float = 1e-6, grad_clip: float = 1.0,
                       seed: int = 42) -> dict:
    """Fine-tune the same classifier with a plain PyTorch loop in this process: no Ray, no
    checkpoints, the same encoding, batches, optimizer and schedule as ours, and the dev set
    scored after every epoch (as ours does). Per-epoch wall times are what ours is set beside.
    """
    import math

    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from tkre.finetune.loop import dev_f1
    from tkre.finetune.markers import encode
    from tkre.finetune.model import RelationClassifier, collate, load_encoder

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = RelationClassifier(load_encoder(encoder_dir), len(meta.labels), meta.dropout)
    encoded = [encode(tokenizer, inst, meta.typed_markers, meta.max_length) for inst in train]
    label_ids = [meta.label_to_id[inst.relation] for inst in train]
    steps = math.ceil(len(train) / batch_size) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=eps)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    epoch_s, scores = [], []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            seed * 1000 + epoch)).tolist()
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            _, loss = model(**collate([encoded[i] for i in rows], tokenizer.pad_token_id,
                                      [label_ids[i] for i in rows]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        scores.append(dev_f1(model, tokenizer, meta, dev, 64))
        epoch_s.append(time.perf_counter() - started)
    return {"epochs": epochs, "train": len(train), "batch_size": batch_size,
            "epoch_s": epoch_s, "samples_per_s": len(train) * epochs / sum(epoch_s),
            "best_dev_micro_f1": max(scores), "threads": torch.get_num_threads()}
