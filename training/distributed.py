"""torchrun integration: one process per device, NCCL on GPU, gloo on CPU.

`torchrun --nproc-per-node N -m training.pretrain ...` sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; a
plain `python -m training.pretrain` is world size 1 and never touches torch.distributed. Besides the training
group, NCCL runs get a small gloo group (`Dist.control`) for host-side decisions that every rank must take
together (stop on a signal, checkpoint now): a CPU all-reduce there never waits on the GPU.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int  # this process's GPU index on its node (torchrun's LOCAL_RANK, or N of --device cuda:N)
    device: torch.device
    local_world_size: int = 1
    control: object = None  # the process group for host-side agreement (None: the default group)

    @property
    def main(self) -> bool:
        return self.rank == 0


def check_device(device: str | None, world: int | None = None) -> None:
    """ValueError (one line, before anything is written) for a device this machine cannot give."""
    if device is None or device == "cpu":
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:N")
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but no CUDA GPU is visible here (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda}): use --device cpu")
    if m.group(1) is not None:
        if world > 1:
            raise ValueError(f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda "
                             "(or choose GPUs with CUDA_VISIBLE_DEVICES)")
        if int(m.group(1)) >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def init(device: str | None = None) -> Dist:
    """Set up the process group from torchrun's environment (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    check_device(device, world)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        # --device cuda:N (one process only): that GPU is this process's local device, for NVML as for torch
        local = int(device.split(":")[1]) if device and ":" in device else local
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    control = None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            control = dist.new_group(backend="gloo")
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev, local_world_size=local_world,
                control=control)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
