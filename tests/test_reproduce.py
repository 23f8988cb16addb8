"""``pglab reproduce``: tables written back between their markers with their provenance,
and ``--check`` failing when a committed figure no longer comes from the code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pglab.errors import ConfigError, PglabError
from pglab.experiments import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
group = "tiny"
seeds = 2

[set]
env = "pglab/LineWorld-v0"
algo = "reinforce"
weights = "fr"
total_steps = 400
stop_at_return = "none"
eval_every = 0
eval_episodes = 5
checkpoint_every = 0
"run.progress" = "off"

[grid]
lr = [0.01, 0.1]
"""


def checkout(tmp_path, entry='sweeps = ["tiny.toml"]\ncheck = ["lr=0.1,seed=1"]'):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny.toml").write_text(SPEC)
    (tmp_path / "experiments" / "reproduce.toml").write_text(f"[tiny]\n{entry}\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\nbefore\n<!-- reproduce: tiny -->\nold table\n<!-- /reproduce: tiny -->\nafter\n"
    )
    return page


def test_a_reproduced_table_replaces_what_stood_between_its_markers_and_names_its_commit(tmp_path):
    page = checkout(tmp_path)
    experiment = rp.load_registry(tmp_path)["tiny"]
    rp.reproduce(
        experiment, tmp_path, tmp_path / "runs", "pglab reproduce tiny", echo=lambda _: None
    )
    text = page.read_text()
    assert text.startswith(
        "# Page\n\nbefore\n<!-- reproduce: tiny -->\n*Produced by `pglab reproduce tiny` at "
    )
    assert text.endswith("<!-- /reproduce: tiny -->\nafter\n") and "old table" not in text
    assert "| lr=0.1 | 2 |" in text and "![" in text
    figures = json.loads((tmp_path / "docs" / "experiments" / "tiny.json").read_text())
    assert set(figures["runs"]) == {f"lr={lr},seed={s}" for lr in (0.01, 0.1) for s in (0, 1)}
    assert figures["command"] == "pglab reproduce tiny" and figures["machine"]
    assert (tmp_path / "docs" / "experiments" / "tiny.png").stat().st_size > 0
    # the check reruns its run from scratch and finds the same figures ...
    lines = []
    assert rp.check([experiment], tmp_path, echo=lines.append)
    assert lines == ["tiny lr=0.1,seed=1: ok"]
    # ... and fails, naming the run and the figure, when the committed one differs
    figures["runs"]["lr=0.1,seed=1"]["eval_return_mean"] += 0.5
    (tmp_path / "docs" / "experiments" / "tiny.json").write_text(json.dumps(figures))
    lines.clear()
    assert not rp.check([experiment], tmp_path, echo=lines.append)
    assert lines[0].startswith("tiny lr=0.1,seed=1: DIFFERS: eval_return_mean committed ")


TRAIN = (
    "pglab train --env pglab/LineWorld-v0 --algo reinforce --weights fr --steps 400 "
    "--out {out} --name one --set run.group=g --set run.progress=off --set eval_every=0 "
    "--set stop_at_return=none --set checkpoint_every=0 --set env.kwargs={grid_size=5}"
)
COMMANDS = (
    f'commands = ["{TRAIN}", "pglab report {{out}}/g"]\n'
    'table = "{out}/g/report/report.md"\nplot = "{out}/g/report/learning_curves.png"'
)


def test_an_experiment_of_command_lines_writes_the_table_they_produce(tmp_path):
    """Its folder may hold spaces, and its lines other braces than {out}."""
    page = checkout(tmp_path, COMMANDS)
    experiment = rp.load_registry(tmp_path)["tiny"]
    out = tmp_path / "my runs"
    rp.reproduce(experiment, tmp_path, out, "pglab reproduce tiny", echo=lambda _: None)
    text = page.read_text()
    assert "*Produced by `pglab reproduce tiny` at " in text and "| configuration |" in text
    assert (tmp_path / "docs" / "experiments" / "tiny.png").is_file()
    assert "grid_size = 5" in (out / "tiny" / "g" / "one" / "config.toml").read_text()


def test_a_folder_reproduce_did_not_make_is_never_removed(tmp_path):
    checkout(tmp_path, COMMANDS)
    experiment = rp.load_registry(tmp_path)["tiny"]
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "notes.txt").write_text("precious")
    with pytest.raises(PglabError, match="was not made by pglab reproduce"):
        rp.reproduce(experiment, tmp_path, tmp_path / "runs", "x", echo=lambda _: None)
    assert (tmp_path / "runs" / "tiny" / "notes.txt").read_text() == "precious"


def test_missing_markers_fail_before_any_run(tmp_path):
    page = checkout(tmp_path)
    page.write_text("# Page without markers\n")
    experiment = rp.load_registry(tmp_path)["tiny"]
    with pytest.raises(ConfigError, match="expected one page"):
        rp.reproduce(experiment, tmp_path, tmp_path / "runs", "x", echo=lambda _: None)
    assert not (tmp_path / "runs").exists()


def test_a_check_of_experiments_without_check_runs_says_so(tmp_path):
    checkout(tmp_path, 'sweeps = ["tiny.toml"]')
    with pytest.raises(ConfigError, match="no check runs to rerun: tiny"):
        rp.check(list(rp.load_registry(tmp_path).values()), tmp_path)


@pytest.mark.parametrize(
    "entry, words",
    [
        ('sweeps = ["tiny.toml"]\ncolour = "red"', ["unknown key", "colour", "allowed"]),
        ('sweeps = ["missing.toml"]', ["missing.toml", "does not exist"]),
        ('sweeps = "tiny.toml"', ["sweeps must be a non-empty list of strings"]),
        ('sweeps = ["tiny.toml"]\nrunning_mean = [0, 475]', ["running_mean must be", "[0, 475]"]),
        (
            'commands = ["rm -rf /"]\ntable = "{out}/t.md"\nplot = "{out}/t.png"',
            ["pglab command lines", "rm -rf"],
        ),
        (
            'commands = ["pglab report x"]\ntable = "/etc/t.md"\nplot = "{out}/t.png"',
            ["table must be a path under {out}/", "/etc/t.md"],
        ),
        (
            'commands = ["pglab report x"]\ncheck = ["a"]\ntable = "{out}/t.md"\nplot = "{out}/t.png"',
            ["takes title, commands, table and plot", "check"],
        ),
    ],
)
def test_a_bad_registry_entry_is_one_line_naming_it(tmp_path, entry, words):
    checkout(tmp_path, entry)
    with pytest.raises(ConfigError) as error:
        rp.load_registry(tmp_path)
    assert all(w in str(error.value) for w in words) and "\n" not in str(error.value)


def test_a_cpu_kind_with_pinned_figures_is_checked_against_them_and_others_are_not(tmp_path):
    """Another kind of CPU rounds differently: `--check --pin-cpu` keeps its own figures,
    which its later checks compare with, while the docs' figures stay the reference of
    every other kind."""
    checkout(tmp_path)
    experiments = list(rp.load_registry(tmp_path).values())
    rp.reproduce(experiments[0], tmp_path, tmp_path / "runs", "x", echo=lambda _: None)
    figures = tmp_path / "docs" / "experiments" / "tiny.json"
    record = json.loads(figures.read_text())
    record["runs"]["lr=0.1,seed=1"]["total_steps"] += 1  # as if made on another CPU
    figures.write_text(json.dumps(record))
    lines: list[str] = []
    assert not rp.check(experiments, tmp_path, echo=lines.append)
    assert rp.check(experiments, tmp_path, echo=lines.append, pin=True)
    pinned = json.loads((tmp_path / rp.CPU_REFERENCES).read_text())
    assert list(pinned) == [rp.cpu_kind()] and "code" in pinned[rp.cpu_kind()]
    assert rp.check(experiments, tmp_path, echo=lines.append)
    pinned[rp.cpu_kind()]["experiments"]["tiny"]["lr=0.1,seed=1"]["total_steps"] += 1
    (tmp_path / rp.CPU_REFERENCES).write_text(json.dumps({"Other CPU, AVX512": {}, **pinned}))
    assert not rp.check(experiments, tmp_path, echo=lines.append)  # this kind's, not the docs'


def test_pin_cpu_without_check_is_refused_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "pglab.cli", "reproduce", "--pin-cpu", "mp11"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--pin-cpu" in done.stderr


def test_a_check_without_committed_figures_says_what_to_run(tmp_path):
    checkout(tmp_path)
    with pytest.raises(PglabError, match="run 'pglab reproduce tiny' first"):
        rp.check(list(rp.load_registry(tmp_path).values()), tmp_path)


def test_a_metric_table_averages_each_runs_updates_then_the_runs(tmp_path):
    for name, rows in {"a=1,seed=0": [(1, 2), (3, 2)], "a=1,seed=1": [(2, 1), ("", 5)]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
        lines = ["x,y"] + [f"{x},{y}" for x, y in rows]
        (tmp_path / name / "metrics.csv").write_text("\n".join(lines) + "\n")
        (tmp_path / name / "config.toml").write_text("")
    table = rp.metric_table(tmp_path, ["x", "x/y"])
    # x: runs' means 2 and 2; x/y: (0.5 + 1.5) / 2 = 1 and 2 / 1 = 2
    assert table.splitlines()[2] == "| a=1 | 2 | 1.5 |"


def test_success_lines_count_the_runs_at_the_threshold_per_configuration(tmp_path):
    checkout(tmp_path)
    group = tmp_path / "g"
    for name, rate in {"a=1,seed=0": 0.95, "a=1,seed=1": 0.5, "a=2,seed=0": 0.9}.items():
        (group / name).mkdir(parents=True)
        (group / name / "summary.json").write_text(json.dumps({"eval_success_rate": rate}))
        (group / name / "metrics.csv").write_text("step,episode_return_mean\n1,0\n")
        (group / name / "config.toml").write_text("")
    assert rp.success_lines(group, 0.9) == [
        "- a=1: 1 of 2 runs end with a success rate of at least 90%",
        "- a=2: 1 of 1 runs end with a success rate of at least 90%",
    ]


def test_the_first_update_of_a_running_mean_at_the_threshold():
    assert rp.first_reaching([1, 2, 3, 4, 5], 2, 3.5) == 4  # (3 + 4) / 2
    assert rp.first_reaching([5, 5], 3, 1.0) is None  # never a full window
    assert rp.first_reaching([10, 0, 0, 10, 10], 2, 10.0) == 5


@pytest.mark.parametrize(
    "args, words",
    [
        (["reproduce", "--all", "mp11"], ["names or --all", "mp11"]),
        (["reproduce", "nonsense"], ["unknown experiment", "nonsense", "mp11"]),
        (["reproduce"], ["name the experiments"]),
    ],
)
def test_the_command_line_refuses_what_it_cannot_do_in_one_line(args, words):
    done = subprocess.run(
        [sys.executable, "-m", "pglab.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert all(w in done.stderr for w in words)


def test_outside_a_source_checkout_reproduce_says_where_it_looked(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pglab.cli", "reproduce", "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "experiments/reproduce.toml" in done.stderr


def test_every_registered_experiment_names_specs_of_one_group_and_has_its_markers():
    experiments = rp.load_registry(ROOT)
    page = (ROOT / "docs" / "experiments.md").read_text()
    for experiment in experiments.values():
        if not experiment.commands:
            rp.group_dir(experiment, ROOT / "runs")  # one group (raises otherwise)
        assert f"<!-- reproduce: {experiment.name} -->" in page


def test_every_shipped_experiment_file_is_a_valid_sweep_spec_or_run_config():
    """A spec with a typo would only fail when someone reruns it: each file under
    experiments/ builds every run's config now (train configs: the one run's)."""
    from pglab.config import build_config
    from pglab.experiments.sweep import load_spec

    files = sorted((ROOT / "experiments").rglob("*.toml"))
    assert len(files) > 20
    for path in files:
        text = path.read_text()
        if path.name == "reproduce.toml":
            continue
        if "[grid]" in text or "[[variants]]" in text or "seeds =" in text:
            assert load_spec(path, ROOT / "runs").runs, path
        else:
            build_config(config_file=str(path))


@pytest.mark.slow
def test_the_committed_figures_still_come_from_the_code():
    """`pglab reproduce --check`: the check runs of every experiment, rerun from scratch,
    give the final figures committed in docs/experiments/ (a change to the training
    numerics fails here until the figures are regenerated)."""
    lines = []
    assert rp.check(list(rp.load_registry(ROOT).values()), ROOT, echo=lines.append), "\n".join(
        lines
    )
    assert len(lines) >= 6
