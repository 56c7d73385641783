"""The one training scaffold both training stages run on (pre-training and fine-tuning).

- `cluster`: join the Ray cluster or start a local one (knowledge generation uses it too).
- `strategy`: how a worker steps and checkpoints, DeepSpeed ZeRO 0-3 or plain DDP, from one
  `StrategySettings`.
- `trainer`: `fit` runs a loop on Ray Train with checkpoints under the run root; inside the loop
  `restore` and `report` save and load the one resume format (the strategy's checkpoint plus the
  loop's state dict), so a restarted worker group continues at the exact step.
- `flops`: model FLOPs per token and the hardware's peak, for MFU.
"""
