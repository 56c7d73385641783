"""FLOP accounting for throughput reports: model FLOPs per step and the hardware's peak.

MFU (model FLOPs utilisation) = FLOPs the model needs per second / peak FLOP/s. Model FLOPs of
a transformer encoder, per token: 6 x (non-embedding parameters) for the matmuls (forward 2,
backward 4) plus 12 x layers x hidden x sequence length for attention (Chinchilla / PaLM
accounting); padding is not counted.

Generation (a decoder, forward only) is counted per request: every prompt token once, every
generated token but the last once more, 2 x (non-embedding parameters) each, plus the causal
attention over the context so far and the LM head once per generated token
(`generation_flops`). A generation pass's FLOP limit is that sum over the requests divided by the
peak FLOP/s of the hardware it runs on (`generation_peak`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) peak FLOP/s per GPU from the vendors' datasheets.
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12},
}


def encoder_flops_per_token(num_params: int, layers: int, hidden: int, seq_len: float) -> float:
    """Training FLOPs for one token of a sequence of `seq_len` tokens."""
    return 6.0 * num_params + 12.0 * layers * hidden * seq_len


@dataclass(frozen=True)
class DecoderShape:
    """What a decoder's forward FLOPs depend on."""

    layers: int
    attention_width: int  # query heads x head size
    hidden: int
    vocab_size: int
    non_embedding_params: int  # the LM head excluded too (counted per generated token)

    @classmethod
    def of_model(cls, model_dir: str) -> DecoderShape:
        """Read from the model's config; parameters counted on an empty (meta) copy."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        text = config.get_text_config(decoder=True)
        embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
                      if m is not None for p in m.parameters()}
        params = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(layers=text.num_hidden_layers,
                   attention_width=text.num_attention_heads * head_dim, hidden=text.hidden_size,
                   vocab_size=text.vocab_size, non_embedding_params=params)


def generation_flops(shape: DecoderShape, prompt_tokens: int, generated_tokens: int) -> float:
    """Forward FLOPs of one request without any reuse: the prompt and all generated tokens but
    the last go through the model (2 x params each), the token at position p attends to p + 1
    keys (QK and AV: 4 x layers x width x (p + 1)), and each generated token takes one LM-head
    projection (2 x vocab x hidden)."""
    generated = max(1, generated_tokens)  # an empty answer still took one step (its EOS)
    processed = prompt_tokens + generated - 1
    attention = 2.0 * shape.layers * shape.attention_width * processed * (processed + 1)
    return (2.0 * shape.non_embedding_params * processed + attention
            + 2.0 * shape.vocab_size * shape.hidden * generated)


def measured_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024,
                         repeats: int = 8, device: str = "cpu") -> float:
    """FLOP/s of a square matmul on this device with the current thread count (best of N)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def peak_flops(precision: str, device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for one worker's device."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks.get(precision, peaks["fp32"]), f"datasheet {key} {precision}"
        return measured_matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32,
                                    size=8192, device="cuda"), f"measured matmul on {name}"
    return measured_matmul_peak(), f"measured fp32 matmul, {torch.get_num_threads()} threads"


def precision_of(dtype: str) -> str:
    """"float32" / "float16" / "bfloat16" (or "auto": the model's, bf16 on modern GPUs)."""
    return {"float32": "fp32", "float16": "fp16"}.get(dtype, "bf16")


def generation_peak(dtype: str, num_gpus: float, replicas: int,
                    accelerator_type: str | None) -> tuple[float | None, str]:
    """(peak FLOP/s, source) of the hardware a generation pass runs on.

    On a CPU every replica shares the machine's cores: one matmul peak measured here in the
    generator's dtype (fp32, or bf16 where the engine runs bf16). On GPUs: the datasheet peak of
    `accelerator_type` (else this machine's GPU) times the GPUs in use; None where unknown.
    """
    precision = precision_of(dtype)
    if not num_gpus:
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision,
                                                                           torch.bfloat16)
        # best over two sizes: bf16 (AMX) peaked at 1024, fp32 at 2048 on the 2-core Xeon
        peak = max(measured_matmul_peak(torch_dtype, size=size, repeats=32)
                   for size in (1024, 2048))
        return peak, f"measured {precision} matmul, {torch.get_num_threads()} CPU threads"
    name = accelerator_type or (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else "")
    gpus = max(1.0, num_gpus * replicas)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return (peaks.get(precision, peaks["fp32"]) * gpus,
                    f"datasheet {key} {precision} x {gpus:g} GPU(s)")
    return None, f"unknown GPU {name or '(none visible to the driver)'}"
