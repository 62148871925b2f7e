"""The report in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Skipped with a reason when Playwright or Chromium is missing; ``.ci/run`` installs both. A
screenshot of every section is saved under ``test-artifacts/`` (or ``$AUTOTRANSFER_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from PIL import Image
from sklearn.datasets import load_digits

from autotransfer import search
from autotransfer.cli.main import main
from tests.conftest import HYMENOPTERA, ZOO_FILE, needs_shared
from tests.test_report import EVIL, SECTIONS

CHROMIUM = os.environ.get("AUTOTRANSFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("AUTOTRANSFER_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
# As root in a container Chromium needs --no-sandbox; the network flags stop it calling home.
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
_PLOTS_DRAWN = "[...document.querySelectorAll('.plot')].every(d => d.querySelector('.main-svg'))"


@dataclass
class OpenedReport:
    """A report loaded in Chromium, with what the page did while loading."""

    page: Any
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


def _skip(reason: str) -> NoReturn:
    if os.environ.get("AUTOTRANSFER_REQUIRE_BROWSER"):  # set by .ci/run once Chromium is installed
        pytest.fail(f"AUTOTRANSFER_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        _skip("Playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        _skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        yield chromium
        chromium.close()


def open_report(browser: Any, path: Path) -> OpenedReport:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    opened = OpenedReport(page)
    page.on("console", lambda m: opened.console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: opened.console.append(f"uncaught: {e}"))
    page.on("request", lambda r: opened.requests.append(r.url) if r.url != path.as_uri() else None)
    page.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_function(_PLOTS_DRAWN, timeout=30_000)
    return opened


@pytest.fixture(scope="module")
def hymenoptera_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real search: hymenoptera photos (12 train, 20 val per class), real pretrained weights."""
    if not (HYMENOPTERA.is_dir() and ZOO_FILE.is_file()):
        pytest.skip("../shared/data (hymenoptera and the zoo weights) is not present")
    root = tmp_path_factory.mktemp("hymenoptera") / "hymenoptera_data"
    for split, n in (("train", 12), ("val", 20)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((HYMENOPTERA / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(src, root / split / cls / src.name)
    space = {"backbone": ["tf_mobilenetv3_small_100.tf1_in1k", "mobilenetv2_035.keras_in1k"],
             "freeze_depth": [1.0, 0.5], "head_width": [0, 1024], "learning_rate": {"low": 1e-4, "high": 1e-2}}
    out = root.parent / "out"
    search(root, space=space, n_trials=6, epochs=2, batch_size=16, zoo=ZOO_FILE, out=out, device="cpu",
           pruner="median", seed=0)
    return out / "report.html"


@needs_shared
def test_hymenoptera_report_opens_in_chromium_with_every_section_filled(browser: Any,
                                                                       hymenoptera_report: Path) -> None:
    opened = open_report(browser, hymenoptera_report)
    page = opened.page
    assert opened.console == [] and opened.requests == [] and opened.dialogs == []
    shots = ARTIFACTS / "report-hymenoptera"
    shots.mkdir(parents=True, exist_ok=True)
    for section in SECTIONS:
        locator = page.locator(f"section#{section}")
        text = locator.inner_text()
        assert len(text.splitlines()) > 1, f"section {section} is empty"
        assert "not available" not in text and "No trial" not in text, f"section {section}: {text[:300]}"
        locator.screenshot(path=str(shots / f"{section}.png"))
    page.screenshot(path=str(shots / "full-page.png"), full_page=True)
    plots = page.locator(".plot")
    assert plots.count() == 6  # curves, history, importances, 2 x cost, val confusion (no test split here)
    assert "Recommended strategy" in page.locator("#summary").inner_text()
    assert "The search's pick is" in page.locator("#baseline").inner_text()
    assert "no test split" in page.locator("#test-split").inner_text()
    page.close()


def _evil_digits(root: Path) -> Path:
    """Real images (scikit-learn's digits, 0 and 1) in class folders named ``zero`` and EVIL."""
    digits = load_digits()
    for label, name in ((0, "zero"), (1, EVIL)):
        folder = root / name
        folder.mkdir(parents=True)
        for k, index in enumerate([i for i, y in enumerate(digits.target) if y == label][:30]):
            pixels = (digits.images[index] * (255 / 16)).astype("uint8")
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / f"{k}.png")
    return root


def test_a_hostile_class_name_is_shown_as_text_and_runs_nothing(tmp_path: Path, test_model_zoo: Path,
                                                                tiny_space: dict[str, object],
                                                                request: pytest.FixtureRequest) -> None:
    data = _evil_digits(tmp_path / "data")
    search(data, space=tiny_space, n_trials=3, epochs=1, zoo=test_model_zoo, out=tmp_path / "out", device="cpu")
    # the refit's per-class table and confusion matrix name the classes too (the command rewrites the report)
    assert main(["refit", "--storage", f"sqlite:///{tmp_path / 'out' / 'study.db'}", "--out", str(tmp_path / "m"),
                 "--zoo", str(test_model_zoo), "--device", "cpu"]) == 0
    report = tmp_path / "out" / "report.html"
    html = report.read_text()
    assert "Test figures of the refit model" in html
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    chromium = request.getfixturevalue("browser")  # skips here, after the HTML checks, without Chromium
    opened = open_report(chromium, report)
    page = opened.page
    assert opened.dialogs == [] and opened.requests == [] and opened.console == []
    assert page.locator("img").count() == 0
    assert EVIL in page.locator("body").inner_text()  # shown as text in the tables
    for figure in ("confusion_val", "confusion_refit"):  # and as text in the plotly confusion matrices
        assert EVIL in page.locator(f"#fig-{figure} .xtick text").all_text_contents()
    shots = ARTIFACTS / "report-hostile-class-name"
    shots.mkdir(parents=True, exist_ok=True)
    page.locator("section#best-trial").screenshot(path=str(shots / "best-trial.png"))
    page.close()


def test_the_finalists_section_opens_in_chromium(tmp_path: Path, test_model_zoo: Path,
                                                 request: pytest.FixtureRequest) -> None:
    space = {"backbone": ["test_resnet.local"], "freeze_depth": [0.5, 1.0], "head_width": [0, 16],
             "learning_rate": {"low": 3e-3, "high": 1e-2}}
    result = search(_evil_digits(tmp_path / "data"), space=space, n_trials=4, epochs=1, zoo=test_model_zoo,
                    out=tmp_path / "out", device="cpu", pruner="none", baseline=False, finalists=2, repeats=2)
    assert result.decision is not None
    page, text = _open_section(request, tmp_path / "out" / "report.html", "finalists")
    assert result.decision["outcome"] in text and "P(tie)" in text and "Recommended: trial" in text
    page.close()


def _open_section(request: pytest.FixtureRequest, report: Path, section: str) -> tuple[Any, str]:
    """Open ``report`` in Chromium (skipped without it, after the HTML check), check the page loaded cleanly,
    screenshot ``section`` and return the page and that section's text."""
    assert f'id="{section}"' in report.read_text()
    opened = open_report(request.getfixturevalue("browser"), report)
    assert opened.dialogs == [] and opened.requests == [] and opened.console == []
    locator = opened.page.locator(f"section#{section}")
    shots = ARTIFACTS / f"report-{section}"
    shots.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(shots / f"{section}.png"))
    return opened.page, locator.inner_text()


def test_the_screen_section_opens_in_chromium(tmp_path: Path, test_model_zoo: Path,
                                              request: pytest.FixtureRequest) -> None:
    space = {"backbone": ["test_resnet.local"], "freeze_depth": [1.0], "head_width": [0],
             "learning_rate": {"low": 3e-3, "high": 1e-2}}
    search(_evil_digits(tmp_path / "data"), space=space, n_trials=1, epochs=1, zoo=test_model_zoo,
           out=tmp_path / "out", device="cpu", baseline=False, finalists=0, screen=1)
    page, text = _open_section(request, tmp_path / "out" / "report.html", "screen")
    assert "Backbone screen" in text and "leave-one-out accuracy on train" in text and "test_resnet.local" in text
    assert page.locator("section#screen tbody tr").count() == 1
    page.close()
