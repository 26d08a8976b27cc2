"""Device names (`--device`): the one pattern every command checks them against, and the
torch device a name stands for on this machine."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from matcli.errors import MatcliError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"


def check_device(name: str) -> str:
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a device: use {DEVICE_HELP.replace(' |', ',')}")
    return name


def pick_device(name: str) -> torch.device:
    """`auto` takes the local GPU under torchrun (LOCAL_RANK), else the first, else the CPU;
    a named device must exist here."""
    import torch

    try:
        check_device(name)
    except ValueError as e:
        raise MatcliError(f"--device {e}") from None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda"):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(name.partition(":")[2] or 0) >= found:
            raise MatcliError(
                f"--device {name}: this machine has {found} CUDA device(s); "
                "use --device cpu or auto"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise MatcliError("--device mps: no Apple GPU here; use --device cpu or auto")
    return torch.device(name)
