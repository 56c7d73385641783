"""How a worker steps and checkpoints: DeepSpeed ZeRO (stages 0-3) or plain DDP.

Both expose the same small surface to the loop: `forward(batch)`, `backward(loss)`, `step()`
(optimizer + LR schedule), `lr`, `save(folder, state)` and `load(folder) -> state`. DeepSpeed
checkpoints are sharded (every rank writes its part, Ray merges the folders); DDP checkpoints
are one file written by rank 0. Pre-training and fine-tuning build theirs from the same
`StrategySettings`, so both get the same engines and the same checkpoint format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

DS_TAG = "ds"
DDP_FILE = "state.pt"


@dataclass(frozen=True)
class StrategySettings:
    """What a strategy needs from a stage's config (PretrainConfig, FinetuneConfig)."""

    strategy: str
    zero_stage: int
    precision: str
    batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float
    use_gpu: bool
    eps: float = 1e-8

    @classmethod
    def of(cls, cfg, eps: float = 1e-8) -> StrategySettings:
        """From a stage config with these fields and a `train: TrainConfig`."""
        return cls(cfg.strategy, cfg.zero_stage, cfg.precision, cfg.batch_size, cfg.lr,
                   cfg.weight_decay, cfg.warmup_ratio, cfg.grad_clip, cfg.train.use_gpu, eps)


def resolved_precision(cfg: StrategySettings) -> str:
    if cfg.precision == "auto":
        return "bf16" if cfg.use_gpu else "fp32"
    return cfg.precision


def _schedule(cfg: StrategySettings, total_steps: int):
    return lambda optimizer: get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps)


def deepspeed_config(cfg: StrategySettings, world: int) -> dict:
    precision = resolved_precision(cfg)
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": max(1, cfg.batch_size // world),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        # torch's AdamW: no C++ op to compile (DeepSpeed's fused and CPU Adam are JIT builds);
        # on a GPU its fused kernel (one launch for every tensor: small steps are launch-bound)
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                   "eps": cfg.eps, "torch_adam": True,
                                                   "fused": cfg.use_gpu}},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def parameters(model: torch.nn.Module, lr: float) -> list:
    """What the optimizer updates: the model's own groups (`param_groups(lr)`, e.g. a head at
    its own rate) when it defines them, else every trainable parameter at lr."""
    if hasattr(model, "param_groups"):
        return [group for group in model.param_groups(lr) if group["params"]]
    return [p for p in model.parameters() if p.requires_grad]


class DeepSpeedStrategy:
    every_rank_saves = True

    def __init__(self, model: torch.nn.Module, cfg: StrategySettings, world: int,
                 total_steps: int):
        import deepspeed
        import deepspeed.ops

        # the shared-memory collective op is a JIT C++ build on CPU; gloo does the same job
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameters(model, cfg.lr),
            config=deepspeed_config(cfg, world), lr_scheduler=_schedule(cfg, total_steps))
        self.device = self.engine.device

    def forward(self, batch: dict) -> dict:
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: Path, state: dict) -> None:
        self.engine.save_checkpoint(str(folder), tag=DS_TAG, client_state={"loop": state})

    def load(self, folder: Path) -> dict:
        _, client = self.engine.load_checkpoint(str(folder), tag=DS_TAG)
        return client["loop"]


class DDPStrategy:
    every_rank_saves = False

    def __init__(self, model: torch.nn.Module, cfg: StrategySettings, world: int,
                 total_steps: int, ray_train: bool = True):
        self.module = model
        # wrap (and move) before the optimizer exists, so restored state lands on the device
        if ray_train:
            import ray.train.torch

            self.model = ray.train.torch.prepare_model(model)
            self.device = ray.train.torch.get_device()
        else:  # one process outside Ray Train (the bench's plain loop): the bare module
            self.device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available()
                                       else "cpu")
            self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(parameters(model, cfg.lr), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, eps=cfg.eps,
                                           fused=cfg.use_gpu)
        self.scheduler = _schedule(cfg, total_steps)(self.optimizer)
        self.grad_clip = cfg.grad_clip
        self.autocast = resolved_precision(cfg) == "bf16"

    def forward(self, batch: dict) -> dict:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, folder: Path, state: dict) -> None:
        torch.save({"loop": state, "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}, folder / DDP_FILE)

    def load(self, folder: Path) -> dict:
        saved = torch.load(folder / DDP_FILE, map_location="cpu", weights_only=True)
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        return saved["loop"]


def make_strategy(model: torch.nn.Module, cfg: StrategySettings, world: int, total_steps: int,
                  ray_train: bool = True):
    """The strategy's engine; `ray_train` False: DDP's optimizer and schedule on the bare model
    in one process without Ray Train (DeepSpeed brings its own process group either way)."""
    if cfg.strategy == "deepspeed":
        return DeepSpeedStrategy(model, cfg, world, total_steps)
    return DDPStrategy(model, cfg, world, total_steps, ray_train=ray_train)


def full_state_dict(folder: Path, strategy: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """The whole model's fp32 weights from a checkpoint folder (ZeRO shards gathered)."""
    if strategy == "ddp":
        return torch.load(folder / DDP_FILE, map_location="cpu", weights_only=True)["model"]
    if zero_stage == 0:
        saved = torch.load(folder / DS_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                           weights_only=False)
        return saved["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DS_TAG)
