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


def assert_trains_from(config_file, out, capsys):
    """``pglab train --config CONFIG_FILE`` (a tune's ``best.toml``) trains briefly, exit 0."""
    code, _, err = run_cli(
        ["train", "--config", str(config_file), "--steps", "256", "--out", str(out),
         "--set", "run.progress=off"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
