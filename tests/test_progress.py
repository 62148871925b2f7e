"""Live progress: bars on a terminal (a pseudo-terminal here), plain lines without control characters elsewhere."""

from __future__ import annotations

import multiprocessing
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotransfer import progress
from tests.conftest import cli_env


def test_bars_are_silent_unless_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    progress.enable(False)
    with progress.bar("features", total=10) as shown:
        shown.update(10)
    progress.write("a line")
    out, err = capsys.readouterr()
    assert out == "a line\n" and err == ""
    progress.enable(True)
    try:
        with progress.bar("features", total=10) as shown:
            shown.update(10)
    finally:
        progress.enable(False)
    assert "features" in capsys.readouterr().err


def _worker(sink: object) -> None:
    """A worker process's progress: a bar of 40 images, a line, a finished trial."""
    progress.forward(sink, "worker 3")
    with progress.bar("features test_resnet", total=40) as shown:
        for _ in range(40):
            shown.update(1)
    progress.write("trial 7 complete")
    progress.advance("trials", "best so far 0.9")


def test_a_workers_bars_and_lines_are_drawn_by_the_launcher(capsys: pytest.CaptureFixture[str]) -> None:
    context = multiprocessing.get_context("spawn")
    sink = context.Queue()
    progress.enable(True)
    try:
        with progress.bar("trials", total=2, unit="trial", leave=True, name="trials"), progress.relay(sink):
            worker = context.Process(target=_worker, args=(sink,))
            worker.start()
            worker.join(timeout=60)
    finally:
        progress.enable(False)
    assert worker.exitcode == 0
    out, err = capsys.readouterr()
    assert "trial 7 complete" in out, (out, err)  # the worker's line, printed by the launcher above the bars
    assert "worker 3 features test_resnet" in err and "/40 " in err  # the worker's bar, drawn here
    assert "1/2" in err and "best so far 0.9" in err  # its finished trial advanced the launcher's trials bar


def _command(tmp_path: Path, zoo: Path, space: dict[str, object], *extra: str) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({**space, "freeze_depth": [1.0, 0.0]}))
    return [sys.executable, "-m", "autotransfer", "search", "digits", "--space", str(space_file), "--zoo", str(zoo),
            "--n-trials", "2", "--epochs", "1", "--finalists", "0", "--no-baseline", "--device", "cpu",
            "--out", str(tmp_path / "out"), *extra]


def _read_all(fd: int, process: subprocess.Popen[bytes]) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


@pytest.mark.slow
def test_a_terminal_gets_live_bars_and_a_pipe_gets_plain_lines(tmp_path: Path, test_model_zoo: Path,
                                                               tiny_space: dict[str, object]) -> None:
    env = {**cli_env(), "PATH": os.environ["PATH"], "COLUMNS": "120"}
    master, slave = pty.openpty()
    process = subprocess.Popen(_command(tmp_path / "tty", test_model_zoo, tiny_space, "--screen", "1"), stdout=slave,
                               stderr=slave, env=env)
    os.close(slave)
    shown = _read_all(master, process).decode("utf-8", "replace")
    os.close(master)
    assert process.wait(timeout=300) == 0, shown[-3000:]
    assert "\r" in shown and "trials" in shown and ("batch/s" in shown or "s/batch" in shown)
    assert "features test_resnet" in shown and "img/s" in shown  # the screen's extraction, per backbone
    assert "Screen by knn kept test_resnet.local" in shown
    assert "trial 1 complete" in shown  # the per-trial lines still print, above the bars

    piped = subprocess.run(_command(tmp_path / "pipe", test_model_zoo, tiny_space), capture_output=True, text=True,
                           env=env, timeout=300)
    assert piped.returncode == 0, piped.stderr[-3000:]
    for stream in (piped.stdout, piped.stderr):
        assert "\r" not in stream and "\x1b[" not in stream
    assert "trial 1 complete" in piped.stdout and "epoch 1/1" in piped.stdout
