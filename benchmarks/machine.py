"""What a benchmark prints about itself: the command that ran it and the machine."""

from pglab.bench import command_line, machine

__all__ = ["command_line", "machine"]
