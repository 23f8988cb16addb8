"""What a benchmark prints about itself: the command that ran it, the code and the machine."""

from pglab.bench import code_version, command_line, machine, provenance

__all__ = ["code_version", "command_line", "machine", "provenance"]
