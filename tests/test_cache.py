"""Caches: the same metrics with and without them, reuse from disk, bounds, and the fallbacks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import timm
import torch

from autotransfer import BackboneWithHead as TransferNet
from autotransfer import Budget, ConfigError, fit, load_dataset, load_zoo
from autotransfer.models.frozen_prefix import find_frozen_prefix
from autotransfer.models.zoo import create_backbone
from autotransfer.training import input_plan as plan_module
from autotransfer.training.cache import MemoryCache, memory_cache
from autotransfer.training.runtime import Runtime
from tests.conftest import ZOO_FILE, needs_shared

CPU = torch.device("cpu")
CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits_subset():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:96], "val": ds.splits["val"][:64],
                                           "test": []})


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    memory_cache(0).clear()


def _net(arch: str, freeze: float, head_width: int = 0) -> TransferNet:
    torch.manual_seed(0)
    return TransferNet.build(timm.create_model(arch, num_classes=0), freeze, head_width, n_classes=10)


def _fit(dataset, arch: str, freeze: float, runtime: Runtime, epochs: int = 2):  # type: ignore[no-untyped-def]
    return fit(_net(arch, freeze, 16), dataset, CONFIG, Budget(epochs=epochs, batch_size=32), 3e-3, seed=5,
               device=CPU, hflip=False, runtime=runtime)


@pytest.mark.parametrize(("freeze", "mode"), [(1.0, "features"), (0.5, "prefix")])
def test_cached_and_uncached_training_give_the_same_metrics(digits_subset, freeze: float,  # type: ignore[no-untyped-def]
                                                            mode: str) -> None:
    uncached = _fit(digits_subset, "test_resnet", freeze, Runtime(cache=False))
    cold = _fit(digits_subset, "test_resnet", freeze, Runtime())
    warm = _fit(digits_subset, "test_resnet", freeze, Runtime())  # from the memory cache
    assert uncached.inputs == "images" and cold.inputs == warm.inputs == mode
    for run in (cold, warm):
        assert run.predictions == uncached.predictions
        assert [h["accuracy"] for h in run.history] == [h["accuracy"] for h in uncached.history]
        assert [h["loss"] for h in run.history] == pytest.approx([h["loss"] for h in uncached.history], rel=1e-5)



@pytest.mark.parametrize(("freeze", "mode"), [(1.0, "features"), (0.5, "prefix"), (0.0, "images")])
def test_training_without_validation_trains_the_same_weights(digits_subset, freeze: float,  # type: ignore[no-untyped-def]
                                                             mode: str) -> None:
    """A refit trains with validate=False (its val images are in train): no val pass, the same training."""
    weights = []
    for validate in (True, False):
        torch.manual_seed(0)
        net = _net("test_resnet", freeze)
        result = fit(net, digits_subset, CONFIG, Budget(epochs=2, batch_size=32), 1e-2, seed=0, device=CPU,
                     hflip=False, runtime=Runtime(), validate=validate)
        assert result.inputs == mode and result.epochs_run == 2 and len(result.train_loss) == 2
        assert (result.metrics, result.history, result.predictions) == ({}, [], []) or validate
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(weights[0], weights[1])

@needs_shared
def test_real_backbone_linear_probe_is_the_same_with_the_feature_cache(tiny_hymenoptera: Path) -> None:
    dataset = load_dataset(tiny_hymenoptera)
    zoo = load_zoo(ZOO_FILE)
    results = []
    for runtime in (Runtime(cache=False), Runtime()):
        torch.manual_seed(0)
        backbone, config = create_backbone("mobilenetv2_035.keras_in1k", zoo)
        net = TransferNet.build(backbone, 1.0, 0, dataset.n_classes)
        results.append(fit(net, dataset, config, Budget(epochs=2, batch_size=8), 1e-3, seed=1, device=CPU,
                           runtime=runtime))
    assert [r.inputs for r in results] == ["images", "features"]
    assert results[0].predictions == results[1].predictions
    assert results[1].metrics["accuracy"] == results[0].metrics["accuracy"] > 0.7  # real weights: ants vs bees
    assert results[1].metrics["loss"] == pytest.approx(results[0].metrics["loss"], rel=1e-5)


def test_features_are_reused_from_disk_by_a_fresh_process(digits_subset, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = _fit(digits_subset, "test_resnet", 1.0, Runtime(cache_dir=tmp_path))
    files = list((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "features").glob(".tmp-*"))
    memory_cache(0).clear()  # what a new worker process or a restart starts with

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were recomputed instead of read from disk")

    monkeypatch.setattr(plan_module, "_extract", no_extraction)
    again = _fit(digits_subset, "test_resnet", 1.0, Runtime(cache_dir=tmp_path))
    assert again.inputs == "features" and again.history == first.history
    # other weights: another fingerprint, so the stored file is not used
    with pytest.raises(AssertionError, match="recomputed"):
        with torch.no_grad():
            net = _net("test_resnet", 1.0, 16)
            next(net.backbone.parameters()).add_(1.0)
        fit(net, digits_subset, CONFIG, Budget(epochs=1), 3e-3, seed=5, device=CPU, hflip=False,
            runtime=Runtime(cache_dir=tmp_path))


def test_a_corrupt_cache_file_is_recomputed(digits_subset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = _fit(digits_subset, "test_resnet", 1.0, Runtime(cache_dir=tmp_path))
    path = next((tmp_path / "features").glob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    memory_cache(0).clear()
    again = _fit(digits_subset, "test_resnet", 1.0, Runtime(cache_dir=tmp_path))
    assert again.history == first.history and path.stat().st_size > 100


def test_prefix_activations_over_the_memory_bound_train_on_images(digits_subset) -> None:  # type: ignore[no-untyped-def]
    small = _fit(digits_subset, "test_resnet", 0.5, Runtime(cache_mb=0.01))
    reference = _fit(digits_subset, "test_resnet", 0.5, Runtime(cache=False))
    assert small.inputs == "images" and small.history == reference.history


def test_a_vit_prefix_fails_the_proof_and_trains_on_images(digits_subset) -> None:  # type: ignore[no-untyped-def]
    net = _net("test_vit", 0.5)
    prefix = find_frozen_prefix(net)
    assert prefix is not None  # patch_embed and early blocks are a frozen run, but position embeddings
    images = torch.randn(2, 3, 32, 32)  # are added between them, so the chain is not the forward
    assert not prefix.verify(images)
    result = fit(net, digits_subset, CONFIG, Budget(epochs=1), 3e-3, seed=5, device=CPU, hflip=False)
    assert result.inputs == "images"


def test_full_fine_tuning_is_augmented_and_frozen_strategies_are_not(digits_subset) -> None:  # type: ignore[no-untyped-def]
    from autotransfer.training.input_plan import prepare_inputs

    for freeze, augment in ((0.0, True), (0.5, False), (1.0, False)):
        with prepare_inputs(_net("test_resnet", freeze), digits_subset, CONFIG, 32, seed=0, device=CPU,
                            runtime=Runtime(cache=False), hflip=False) as inputs:
            assert inputs.augment is augment


def test_frozen_modules_stay_in_eval_mode_while_training() -> None:
    net = _net("test_resnet", 0.5).train()
    frozen = [m for m in net.backbone.modules() if list(m.parameters()) and
              not any(p.requires_grad for p in m.parameters())]
    trainable = [m for m in net.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen and trainable
    assert not any(m.training for m in frozen) and all(m.training for m in trainable)


def test_micro_batches_accumulate_the_mean_gradient(digits_subset) -> None:  # type: ignore[no-untyped-def]
    whole = _fit(digits_subset, "test_resnet", 1.0, Runtime(micro_batch=32))
    micro = _fit(digits_subset, "test_resnet", 1.0, Runtime(micro_batch=5))  # 32 = 5+5+5+5+5+5+2
    assert [h["loss"] for h in micro.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)


def test_memory_cache_is_bounded_and_least_recently_used() -> None:
    cache = MemoryCache(1000)
    assert cache.put("a", torch.zeros(100))  # 400 bytes
    assert cache.put("b", torch.zeros(100))
    assert cache.get("a") is not None  # a is now the most recent
    assert cache.put("c", torch.zeros(100))  # evicts b
    assert cache.get("b") is None and cache.get("a") is not None and cache.bytes_used == 800
    assert not cache.put("huge", torch.zeros(1000)) and cache.get("huge") is None


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"cache_mb": -1}, "'cache_mb' must be a number of MiB >= 0. Got -1 instead"),
    ({"micro_batch": 0}, "'micro_batch' must be None or a positive integer. Got 0 instead"),
    ({"loader_workers": -2}, "'loader_workers' must be None or an integer >= 0. Got -2 instead"),
])
def test_bad_runtime_settings_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Runtime(**kwargs)  # type: ignore[arg-type]


def test_search_caches_linear_probe_features_in_the_output_folder(digits_subset, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  test_model_zoo: Path) -> None:
    from autotransfer import search

    space = {"backbone": ["test_resnet.local"], "freeze_depth": [1.0], "head_width": [0, 16],
             "learning_rate": {"low": 1e-3, "high": 1e-2}}
    kwargs = {"space": space, "zoo": test_model_zoo, "n_trials": 2, "epochs": 1, "device": "cpu",
              "baseline": False, "pruner": "none"}
    cached = search(digits_subset, out=tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    memory_cache(0).clear()
    uncached = search(digits_subset, out=tmp_path / "b", cache=False, **kwargs)  # type: ignore[arg-type]
    assert [t.user_attrs["inputs"] for t in cached.study.trials] == ["features", "features"]
    assert [t.user_attrs["inputs"] for t in uncached.study.trials] == ["images", "images"]
    assert [t.value for t in cached.study.trials] == [t.value for t in uncached.study.trials]
    assert len(list((tmp_path / "a" / "cache" / "features").glob("test_resnet-*.safetensors"))) == 1
    assert not (tmp_path / "b" / "cache").exists()


def test_command_line_cache_options() -> None:
    from autotransfer.cli.main import build_parser

    args = build_parser().parse_args(["search", "digits", "--no-cache", "--cache-mb", "256", "--compile", "--no-amp"])
    assert (args.no_cache, args.cache_mb, args.compile, args.amp) == (True, 256.0, True, False)
    args = build_parser().parse_args(["demo"])
    assert (args.no_cache, args.cache_mb, args.compile, args.amp) == (False, 1024.0, False, None)
