"""Settings packed once (SearchSettings, Budget, Runtime), the stored format version, the output folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotransfer import Budget, ConfigError, Runtime, SearchSettings, WeightsNotFoundError, load_existing_study, search
from autotransfer.cli import model_commands
from autotransfer.cli.main import main
from autotransfer.settings import split_options
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.storage.records import FORMAT_VERSION, StudyAttr, read_budget, read_config, upgrade_config
from autotransfer.study.search import study_config

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"n_trials": 0}, "'n_trials' must be a positive integer or None"),
    ({"timeout": -5}, "'timeout' must be a positive number of seconds"),
    ({"trial_timeout": float("inf")}, "'trial_timeout' must be a positive number"),
    ({"seed": -1}, "'seed' must be an integer in [0, 4294967295]"),
    ({"seed": 2**32}, "'seed' must be an integer in"),
    ({"pruner": "asha"}, "'pruner' must be one of"),
    ({"device": "tpu"}, "'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"workers": 0}, "'workers' must be a positive integer"),
    ({"heartbeat_interval": 1.5}, "'heartbeat_interval' must be a positive integer"),
    ({"report_every": -1}, "'report_every' must be a number of seconds >= 0"),
])
def test_bad_settings_are_refused_on_construction(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSettings(**kwargs)
    assert fragment in str(info.value)


def test_neighbouring_fields_cannot_be_swapped_by_position() -> None:
    with pytest.raises(TypeError):
        SearchSettings(5, 60.0)  # type: ignore[misc]  # keyword-only: n_trials and timeout cannot be mixed up


def test_keywords_go_to_their_settings_object() -> None:
    study, trial, machine = split_options({"n_trials": 3, "epochs": 2, "cache_mb": 64.0}, SearchSettings, Budget,
                                          Runtime)
    assert (study, trial, machine) == ({"n_trials": 3}, {"epochs": 2}, {"cache_mb": 64.0})
    with pytest.raises(ConfigError, match=r"'option' must be one of .*Got 'n_trails' instead"):
        split_options({"n_trails": 3}, SearchSettings, Budget, Runtime)


def test_search_refuses_bad_settings_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'seed' must be"):
        search("no-such-folder", seed=-1, out=tmp_path / "out")
    with pytest.raises(ConfigError, match="'option' must be one of"):
        search("digits", settings=SearchSettings(n_trials=1), n_trails=2)
    assert not (tmp_path / "out").exists()


def test_the_search_command_reports_a_bad_seed_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "digits", "--seed", "-1", "--out", "/nonexistent/never"]) == 1
    err = capsys.readouterr().err
    assert "autotransfer: error: The 'seed' must be an integer" in err and "Traceback" not in err


def test_an_unwritable_output_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be written"):
        OutputFolder(blocker / "out").create()  # below a regular file: not even root can create it


def test_the_output_folder_names_every_path(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path)
    assert (folder.sqlite.name, folder.journal.name, folder.cache.name, folder.leaderboard.name,
            folder.report.name) == ("study.db", "study.journal", "cache", "leaderboard.csv", "report.html")
    assert folder.storage_url(1) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    assert folder.storage_url(2) == str(tmp_path.resolve() / "study.journal")
    assert OutputFolder.of_storage(f"sqlite:///{tmp_path / 'study.db'}") == folder
    assert OutputFolder.of_storage("postgresql://host/db") is None


def test_a_format_0_configuration_is_upgraded_in_memory() -> None:
    old = {"dataset": {"name": "d"}, "space": {"backbone": {"choices": ["m"]}},
           "budget": {"epochs": 2, "batch_size": 32, "metric": "accuracy", "weight_decay": 0.01}}
    new = upgrade_config(old)
    assert new["format_version"] == FORMAT_VERSION == 1
    assert new["budget"] == {"epochs": 2, "batch_size": 32, "metric": "accuracy"} and "weight_decay" not in new["space"]
    assert old["budget"]["weight_decay"] == 0.01  # the stored record is left as it was
    other = upgrade_config({**old, "budget": {**old["budget"], "weight_decay": 0.05}})
    assert other["space"]["weight_decay"] == {"choices": [0.05]}  # a non-default decay becomes a fixed dimension
    assert read_budget(new, epochs=5) == Budget(epochs=5, batch_size=32, metric="accuracy")


def test_the_0_1_0_fixture_reads_as_format_1_and_new_studies_write_it(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "sqlite", tmp_path / "s")
    study = load_existing_study(f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert "format_version" not in study.user_attrs[StudyAttr.CONFIG]
    assert read_config(study)["format_version"] == 1 and "weight_decay" not in read_config(study)["budget"]
    from autotransfer import load_dataset, load_search_space

    config = study_config(load_dataset("digits", seed=0), load_search_space("demo"), Budget())
    assert config["format_version"] == FORMAT_VERSION


def test_refit_takes_the_runtime_flags_of_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(FIXTURES / "sqlite", tmp_path / "s")
    seen: dict[str, Any] = {}

    def fake_refit(study: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise ConfigError("stop here")  # the flags are what is checked; nothing trains

    monkeypatch.setattr(model_commands, "refit", fake_refit)
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    assert main(["refit", "--storage", storage, "--out", str(tmp_path / "m"), "--cache-mb", "64", "--compile",
                 "--no-amp"]) == 1
    runtime = seen["runtime"]
    assert (runtime.cache_mb, runtime.compile, runtime.amp, runtime.cache) == (64.0, True, False, True)
    assert Path(runtime.cache_dir) == tmp_path / "s" / "cache"  # the search's feature cache
    assert main(["refit", "--storage", storage, "--out", str(tmp_path / "m"), "--no-cache"]) == 1
    assert seen["runtime"].cache is False and seen["runtime"].cache_dir is None


def _broken_zoo(tmp_path: Path, suffix: str) -> Path:
    (tmp_path / f"broken{suffix}").write_text("<html>504 Gateway Time-out</html>")  # a failed download
    zoo = {"broken.local": {"architecture": "test_resnet", "file": f"broken{suffix}",
                            "pretrained_cfg": {"input_size": [3, 32, 32], "num_classes": 0}}}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_zoo_file_that_is_not_weights_stops_the_search_before_any_trial(
        tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str], tiny_space: dict[str, object]) -> None:
    zoo = _broken_zoo(tmp_path, suffix)
    space = {**tiny_space, "backbone": ["broken.local"]}
    with pytest.raises(WeightsNotFoundError, match=rf"Zoo entry 'broken.local' .* names '.*broken{suffix}', "
                                                   "which is not a weights file"):
        search("digits", space=space, zoo=zoo, n_trials=1, out=tmp_path / "out")
    assert not (tmp_path / "out" / "study.db").exists()  # no study, no trial
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    assert main(["search", "digits", "--space", str(space_file), "--zoo", str(zoo), "--out",
                 str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert "autotransfer: error: Zoo entry 'broken.local'" in err and "Traceback" not in err


def test_a_failed_hub_download_stops_the_search_before_any_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_space: dict[str, object]) -> None:
    from autotransfer.models import zoo as zoo_module

    calls: list[str] = []

    def offline(name: str, **kwargs: object) -> None:
        calls.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(zoo_module.timm, "create_model", offline)
    space = {**tiny_space, "backbone": ["resnet18.a1_in1k"]}
    with pytest.raises(WeightsNotFoundError, match=r"'resnet18.a1_in1k' could not be downloaded .* --zoo FILE"):
        search("digits", space=space, n_trials=3, out=tmp_path / "out")
    assert calls == ["resnet18.a1_in1k"]  # once, in the launching process: no trial tried it
    assert not (tmp_path / "out" / "study.db").exists()


def test_an_unwritable_out_is_refused_before_the_dataset_is_scanned(tmp_path: Path, test_model_zoo: Path,
                                                                    tiny_space: dict[str, object]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be written"):  # the folder's error, not the dataset's
        search("no-such-folder", space=tiny_space, zoo=test_model_zoo, out=blocker / "out")
