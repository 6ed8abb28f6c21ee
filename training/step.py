"""One optimizer step, shared by the training loop and the train-mode benchmark (so both time the same work)."""
from __future__ import annotations

import torch


class TrainStep:
    """views -> forward (bf16 autocast on CUDA) -> backward -> LARS step -> EMA target update. No host sync."""

    def __init__(self, method, model, opt, device: torch.device):
        self.method, self.model, self.opt = method, model, opt
        self.cuda = device.type == "cuda"

    def __call__(self, views, step: int, total: int, lr: float) -> torch.Tensor:
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.cuda:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            loss = self.model(*views)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.method.update_target(step, total)
        return loss.detach()
