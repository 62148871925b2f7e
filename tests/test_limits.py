"""Failures stay local: per-trial time limits, out-of-memory retries, bad images, signals; and determinism."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from autotransfer import DataError, Interrupted, interrupt, load_dataset, search
from autotransfer.cli.main import main
from autotransfer.data.dataset import ImageDataset, _digits
from autotransfer.storage.records import stop_reason
from autotransfer.study.recovery import record_run


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:96], "val": ds.splits["val"][:60],
                                           "test": []})


def _kwargs(zoo: Path, space: dict[str, object], **extra: Any) -> dict[str, Any]:
    return {"space": space, "zoo": zoo, "device": "cpu", "seed": 0, "baseline": False, **extra}


def test_trial_timeout_prunes_at_the_last_epoch_or_fails_before_the_first(
        digits_small: ImageDataset, test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    result = search(digits_small, n_trials=2, epochs=10_000, pruner="none", trial_timeout=1.5,
                    **_kwargs(test_model_zoo, tiny_space))
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]  # recorded, and the study went on
    for t in trials:
        assert stop_reason(t).startswith("timeout: over the 1.5 s trial limit") and t.intermediate_values
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    early = search(digits_small, n_trials=1, epochs=5, trial_timeout=1e-6, **_kwargs(test_model_zoo, tiny_space))
    assert early.study.trials[0].state.name == "FAIL" and "epoch 1" in stop_reason(early.study.trials[0])
    with pytest.raises(ValueError, match="'trial_timeout' must be a positive number"):
        search(digits_small, trial_timeout=0, **_kwargs(test_model_zoo, tiny_space))


def test_out_of_memory_retries_with_half_the_batch_then_fails_only_that_trial(
        digits_small: ImageDataset, test_model_zoo: Path, tiny_space: dict[str, object],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import autotransfer.study.objective as objective

    real_fit, limit = objective.fit, {"batch": 16}

    def fit_with_small_memory(model: Any, dataset: Any, data_config: Any, budget: Any, *args: Any, **kw: Any) -> Any:
        if budget.batch_size > limit["batch"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {budget.batch_size} MiB")
        return real_fit(model, dataset, data_config, budget, *args, **kw)

    monkeypatch.setattr(objective, "fit", fit_with_small_memory)
    ok = search(digits_small, n_trials=1, epochs=1, batch_size=32, **_kwargs(test_model_zoo, tiny_space))
    trial = ok.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["batch_size"] == 16
    limit["batch"] = 8
    failed = search(digits_small, n_trials=2, epochs=1, batch_size=32, **_kwargs(test_model_zoo, tiny_space))
    assert [t.state.name for t in failed.study.trials] == ["FAIL", "FAIL"]  # each trial failed alone
    assert stop_reason(failed.study.trials[0]).startswith("oom: CUDA out of memory")
    assert "batch size 16, retried from 32" in stop_reason(failed.study.trials[0])


def _png_folder(root: Path, per_class: int = 12) -> Path:
    """A real ImageFolder: scikit-learn's digit scans 0-2 saved as PNG files."""
    pixels, targets = _digits()
    for label in range(3):
        (root / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(targets == label)[:per_class]:
            Image.fromarray(pixels[i]).resize((32, 32)).save(root / str(label) / f"{i}.png")
    return root


def test_an_image_broken_mid_run_fails_only_that_trial(tmp_path: Path, test_model_zoo: Path,
                                                       tiny_space: dict[str, object]) -> None:
    data = load_dataset(_png_folder(tmp_path / "digits_png"), seed=0)
    victim = Path(data.root) / data.splits["train"][0][0]

    def break_an_image(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        if trial.number == 0 and epoch == 1:
            victim.write_bytes(b"this is not a PNG any more")  # replaced after the scan

    result = search(data, n_trials=3, epochs=2, pruner="none", on_epoch=break_an_image,
                    **_kwargs(test_model_zoo, tiny_space))
    trials = result.study.trials
    # The first trial to read the file after it broke fails (trial 0 itself, unless its inputs were
    # already cached); every other trial completes without it.
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and all(t.state.name == "COMPLETE" for t in trials if t is not failed[0])
    assert stop_reason(failed[0]).startswith(f"bad image: {victim}: ")
    assert any(path == str(victim) for path, _ in result.study.user_attrs["autotransfer.excluded"])


def test_a_val_image_broken_mid_run_stops_the_search_with_the_path(tmp_path: Path, test_model_zoo: Path,
                                                                   tiny_space: dict[str, object]) -> None:
    data = load_dataset(_png_folder(tmp_path / "digits_png"), seed=0)
    victim = Path(data.root) / data.splits["val"][0][0]
    victim.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"val image {victim} became unreadable"):
        search(data, n_trials=3, epochs=1, out=tmp_path / "out", **_kwargs(test_model_zoo, tiny_space))
    study = optuna.load_study(study_name="digits_png", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] and str(victim) in stop_reason(study.trials[0])
    assert (tmp_path / "out" / "report.html").is_file()  # outputs written on the way out


def test_one_cpu_worker_with_one_seed_repeats_strategies_and_metrics(
        digits_small: ImageDataset, test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    runs = [search(digits_small, n_trials=4, epochs=2, **_kwargs(test_model_zoo, tiny_space, baseline=True))
            for _ in range(2)]
    first, second = ([(t.params, t.state, t.intermediate_values) for t in run.study.trials] for run in runs)
    assert first == second
    other = search(digits_small, n_trials=4, epochs=2, **_kwargs(test_model_zoo, tiny_space, seed=1))
    assert [t.params for t in other.study.trials] != [t.params for t in runs[0].study.trials]


def test_a_signal_becomes_a_clean_stop_and_a_second_one_is_immediate() -> None:
    with interrupt.graceful_stop(hard_exit=False):
        interrupt.check()  # nothing requested yet
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested() == signal.SIGTERM
        with pytest.raises(Interrupted) as caught:
            interrupt.check()
        assert caught.value.exit_status == 143 and isinstance(caught.value, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert interrupt.requested() is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_search_stops_cleanly_when_asked_before_a_trial(digits_small: ImageDataset, test_model_zoo: Path,
                                                        tiny_space: dict[str, object], tmp_path: Path) -> None:
    def stop_after_first_epoch(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, mid-trial

    with pytest.raises(Interrupted, match="SIGTERM"):
        search(digits_small, n_trials=3, epochs=3, pruner="none", out=tmp_path / "o",
               on_epoch=stop_after_first_epoch, **_kwargs(test_model_zoo, tiny_space))
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'o' / 'study.db'}")
    assert [(t.state.name, stop_reason(t), len(t.intermediate_values)) for t in study.trials] == [
        ("FAIL", "interrupted", 1)]


def test_status_command_prints_progress_best_and_time_left(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.synthetic_study import make_synthetic_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_synthetic_study(12, storage=url, study_name="night")
    record_run(study, n_trials=20, timeout=3600, workers=2)
    running = study.ask()
    running.set_user_attr("worker", {"host": "h", "pid": 1, "index": 1})
    assert main(["status", "--storage", url, "--study-name", "night"]) == 0
    out = capsys.readouterr().out
    counted = sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in study.trials)
    assert f"Study 'night': {counted} of 20 trials finished" in out
    assert f"best so far: val accuracy {study.best_value:.4f} (trial {study.best_trial.number})" in out
    assert "running 2" in out and "running: trial 12, 0 epoch(s) done, worker 1 (pid 1 on h)" in out
    assert "2 worker(s), --timeout 3600 s" in out
    assert "no new trial starts after" in out and "estimated remaining: about" in out
    assert main(["status", "--storage", str(tmp_path / "none.journal")]) == 1
    assert "does not exist" in capsys.readouterr().err
