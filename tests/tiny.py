"""Tiny encoders built from a config for fast tests (no downloads, no real weights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_vocabulary() -> list[str]:
    """Lower-cased words of the demo data set, plus the marker punctuation."""
    from tkre.data.datasets import demo_dir

    words: set[str] = set("@*#^.,;:'\"()-")
    for path in demo_dir().glob("*.jsonl"):
        for line in path.read_text().splitlines():
            text = json.loads(line)["text"].lower()
            words.update(re.findall(r"\w+|[^\w\s]", text))
    return sorted(words)


def make_tiny_encoder(folder: Path, hidden: int = 32, layers: int = 2, dropout: float = 0.1
                      ) -> Path:
    """A random BERT (hidden 32) with a word-level WordPiece vocabulary; saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + demo_vocabulary()
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)},
                              do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=512, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(folder)
    return folder


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_causal_lm(folder: Path, hidden: int = 128) -> Path:
    """A random one-layer Llama (head size 64: vLLM's CPU attention needs it) with a small
    byte-level BPE trained on the demo sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tkre.data.datasets import demo_dir

    folder.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line)["text"] for path in demo_dir().glob("*.jsonl")
             for line in path.read_text().splitlines()]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>",
                                        eos_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
