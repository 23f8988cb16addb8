"""Running the command line in a test: its exit code and what it printed."""

from pglab.cli import main


def run_cli(args, capsys):
    """``pglab ARGS``: (exit code, stdout, stderr), whether it returned or exited."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
