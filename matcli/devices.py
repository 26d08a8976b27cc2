"""Device names (`--device`): the one pattern every command checks them against."""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"


def check_device(name: str) -> str:
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a device: use {DEVICE_HELP.replace(' |', ',')}")
    return name
