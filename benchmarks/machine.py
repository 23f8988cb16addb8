"""What a benchmark prints about itself: the command that ran it and the machine."""

from __future__ import annotations

import os
import platform
import shlex
import sys

import gymnasium as gym
import torch


def command_line() -> str:
    """The command that started this process, ready to paste into a shell."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    """CPU model, cores, torch threads and library versions, on one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        model = names[0] if names else model
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"gymnasium {gym.__version__}"
    )
