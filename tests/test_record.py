"""Videos of trained agents and the line world's trajectory plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pglab
from pglab.cli import main


@pytest.fixture(scope="module")
def lineworld_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return pglab.train(
        "pglab/LineWorld-v0", algo="ppo", total_steps=2048, out=str(out), progress="off"
    )


def test_record_gif_has_every_frame(lineworld_run, tmp_path, capsys):
    out = tmp_path / "agent.gif"
    assert main(["record", str(lineworld_run.path), "--out", str(out), "--episodes", "2"]) == 0
    from PIL import Image

    with Image.open(out) as image:  # Pillow merges repeated frames, adding up their durations
        total = 0
        for index in range(image.n_frames):
            image.seek(index)
            total += image.info["duration"]
    # each episode: the reset frame and 20 steps, at 8 fps (125 ms a frame, within one frame)
    assert abs(total - 2 * (20 + 1) * 125) < 125
    assert "42 frames" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["agent.gif"]  # no partial file left


def test_record_mp4(lineworld_run, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "agent.mp4"
    assert main(["record", str(lineworld_run.path), "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and out.read_bytes()[4:8] == b"ftyp"


def test_record_rejects_other_formats(lineworld_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["record", str(lineworld_run.path), "--out", str(tmp_path / "agent.avi")])
    assert exit_info.value.code == 2
    assert "--out must end in .gif or .mp4" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_lineworld_plot_names_the_success_rate(lineworld_run, tmp_path, capsys):
    out = tmp_path / "trajectories.png"
    assert main(["eval", str(lineworld_run.path), "--episodes", "5", "--plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "success rate" in capsys.readouterr().out


def test_a_stochastic_plot_prints_the_success_rate_of_the_episodes_it_draws(
    lineworld_run, tmp_path, capsys, monkeypatch
):
    import matplotlib.axes

    titles = []
    title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_title",
        lambda ax, text, *a, **k: (titles.append(text), title(ax, text, *a, **k))[1],
    )
    args = ["eval", str(lineworld_run.path), "--episodes", "40", "--stochastic", "--json"]
    assert main([*args, "--plot", str(tmp_path / "t.png")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert titles == [
        f"pglab/LineWorld-v0: 40 episodes, success rate {printed['success_rate']:.0%}"
    ]
    assert len(printed["returns"]) == 40


def test_plot_is_for_the_line_world_only(tmp_path, capsys):
    run = pglab.train("CartPole-v1", algo="ppo", total_steps=256, out=str(tmp_path), progress="off")
    with pytest.raises(SystemExit):
        main(["eval", str(run.path), "--plot", str(tmp_path / "x.png")])
    assert "line-world trajectories" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_recording_long_cartpole_episodes_streams_its_frames(tmp_path):
    """Three 500-step episodes are 1,503 frames of 600x400x3 (1.1 GB held whole): the
    MP4 is encoded frame by frame, so the process stays far below that."""
    pytest.importorskip("imageio_ffmpeg")
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the peak memory from /proc (Linux)")
    script = f"""
import pathlib, pglab
from pglab.experiments.record import record
run = pglab.train("CartPole-v1", "ppo", seed=0, out={str(tmp_path)!r}, progress="off",
                  checkpoint_every=0, total_steps=60_000)
assert run.summary["eval_return_mean"] == 500.0, run.summary
recording = record(run.agent, {str(tmp_path / "three.mp4")!r}, episodes=3)
assert recording.frames == 1503, recording
status = pathlib.Path("/proc/self/status").read_text()  # this program's own peak (VmHWM):
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)  # ru_maxrss keeps the parent's
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 500  # MB at the peak
    assert (tmp_path / "three.mp4").stat().st_size > 0
