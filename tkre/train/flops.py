"""FLOP accounting for throughput reports: model FLOPs per step and the hardware's peak.

MFU (model FLOPs utilisation) = FLOPs the model needs per second / peak FLOP/s. Model FLOPs of
a transformer encoder, per token: 6 x (non-embedding parameters) for the matmuls (forward 2,
backward 4) plus 12 x layers x hidden x sequence length for attention (Chinchilla / PaLM
accounting); padding is not counted.
"""

from __future__ import annotations

import time

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
