"""Command-line interface: ``autotransfer search``, ``demo``, ``screen``, ``report``, ``status``, ``refit``
and ``predict``.

Progress lines and the final leaderboard go to standard output; handlers and printing live
here only (the library logs through ``logging``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from autotransfer import interrupt, progress
from autotransfer._version import __version__
from autotransfer.errors import AutotransferError
from autotransfer.logs import configure_logging
from autotransfer.results.report import write_report
from autotransfer.results.status import (
    describe_decision,
    describe_params,
    format_status,
    sampling_stopped,
    study_status,
)
from autotransfer.settings import PRUNERS, SCREEN_SCORES, Budget, SearchSettings
from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.storage.backends import load_existing_study
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.storage.records import StudyAttr, TrialAttr, best_trial, stop_reason

if TYPE_CHECKING:
    from autotransfer.study.search import SearchResult

__all__ = ["build_parser", "main"]

_SHOW_TRIAL = [TrialAttr.EPOCHS_RUN, TrialAttr.SECONDS, TrialAttr.STOP_REASON]


class _Progress:
    """Prints one line per epoch and per finished trial, with the best value so far."""

    def __init__(self, n_trials: int | None, epochs: int) -> None:
        self.n_trials, self.epochs, self.start = n_trials, epochs, time.perf_counter()

    bar: progress.Bar | None = None  # the trials done against --n-trials, on a terminal

    def epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        p = trial.params
        strategy = " ".join(f"{dim.short} {dim.format(p[name])}".strip() for name, dim in DIMENSIONS.items()
                            if name in p)
        progress.write(f"trial {trial.number}{self._of()} epoch {epoch}/{self.epochs}  val acc "
                       f"{metrics['accuracy']:.4f}  [{strategy}]  {self._best(trial.study)}")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = stop_reason(trial)
        progress.write(f"trial {trial.number} {trial.state.name.lower()} ({reason}) in "
                       f"{trial.user_attrs.get(TrialAttr.SECONDS, 0.0):.1f} s  {self._best(study)}  "
                       f"elapsed {time.perf_counter() - self.start:.0f} s")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self._best(study))
        else:  # in a worker process: the launcher's trials bar (progress.relay)
            progress.advance("trials", self._best(study))

    def _of(self) -> str:
        return f"/{self.n_trials}" if self.n_trials else ""

    @staticmethod
    def _best(study: optuna.Study) -> str:
        best = best_trial(study)
        if best is None or best.value is None:
            return "best so far: none complete"
        return f"best so far {best.value:.4f} (trial {best.number})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``autotransfer`` command."""
    parser = argparse.ArgumentParser(prog="autotransfer", description="Find the best transfer-learning "
                                     "strategy (backbone, freeze depth, head, learning rate) for a dataset.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="search transfer strategies for a dataset")
    s.add_argument("data", help="image folder (one subfolder per class), folder with train/ and val/, or 'digits'")
    _add_common(s, n_trials=20, epochs=3, space="default")
    s.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    s.add_argument("--study-name", help="study name (default: the dataset's folder name)")
    d = sub.add_parser("demo", help="run a small search on scikit-learn's bundled digits (offline, SQLite)")
    _add_common(d, n_trials=6, epochs=2, space="demo")
    r = sub.add_parser("report", help="rebuild the HTML report from a study's storage (any time, even mid-run)")
    r.add_argument("--storage", required=True, help="Optuna storage URL, e.g. sqlite:///reports/NAME/study.db")
    r.add_argument("--study-name", help="study name (may be omitted when the storage holds one study)")
    r.add_argument("--out", type=Path, help="HTML file to write (default: report.html beside a SQLite "
                   "study.db or a study.journal, else reports/STUDY_NAME/report.html)")
    st = sub.add_parser("status", help="print a study's progress: trials by state, best so far, time left")
    _add_study(st)
    _add_screen_command(sub)
    _add_model_commands(sub)
    c = sub.add_parser("confirm", help="run or complete the confirmation stage of a stored study: train the "
                       "finalists again on paired repeats and decide (leader, equivalent or undecided)")
    _add_study(c)
    _add_confirm(c, repeats_help="repeats per finalist (default: 3; a resumed stage keeps its stored plan)")
    _add_stored_inputs(c)
    parser.add_argument("--version", action="version", version=f"autotransfer {__version__}")
    for command in sub.choices.values():
        command.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only (the "
                             "summary is still printed)")
    return parser


def _add_stored_inputs(p: argparse.ArgumentParser) -> None:
    """What a command that trains from a stored study needs besides the study: data, zoo, device, runtime."""
    p.add_argument("--data", help="the dataset folder, if it moved since the search (default: the folder the "
                   "search used)")
    p.add_argument("--zoo", help="local zoo YAML (default: $AUTOTRANSFER_ZOO, then the zoo the search used)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_runtime(p)


def _add_study(p: argparse.ArgumentParser) -> None:
    """``--storage`` (required) and ``--study-name``: which stored study a command reads."""
    p.add_argument("--storage", required=True, help="Optuna storage URL or journal file of the study")
    p.add_argument("--study-name", help="study name (may be omitted when the storage holds one study)")


def _add_confirm(p: argparse.ArgumentParser, *, repeats_help: str) -> None:
    """The confirmation stage's flags (fields of SearchSettings), shared by search, demo and confirm."""
    p.add_argument("--finalists", type=int, default=3, metavar="K", help="strategy families whose best trial is "
                   "trained again after the search (0: no confirmation stage) (default: 3)")
    p.add_argument("--repeats", type=int, metavar="R", help=repeats_help)
    p.add_argument("--tie-margin", type=float, default=1.0, metavar="POINTS", help="differences within this many "
                   "points of the metric count as practically equivalent (default: 1)")
    p.add_argument("--resplit", action="store_true", help="re-draw train/val for each repeat even when val is a "
                   "folder you gave (default: only for splits autotransfer made, with under 1,000 val images)")


def confirm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~autotransfer.settings.SearchSettings` fields the confirmation flags give."""
    return {"finalists": args.finalists, "repeats": args.repeats, "tie_margin": args.tie_margin / 100,
            "resplit": args.resplit}


def _add_screen_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sc = sub.add_parser("screen", help="rank backbones by transferability scores (LogME, H-score, k-NN, linear "
                        "probe) of their pooled features, without training; writes OUT/screen.csv")
    sc.add_argument("data", help="image folder (one subfolder per class), folder with train/ and val/, or 'digits'")
    sc.add_argument("--space", default="default", help="screen the backbones of this search space (default: default)")
    sc.add_argument("--backbones", help="comma-separated zoo or timm names to screen instead of the space's")
    sc.add_argument("--resolutions", metavar="PX,PX", help="screen every backbone at each of these input sizes "
                    "(default: each backbone's own)")
    sc.add_argument("--score", default=SCREEN_SCORES[0], choices=SCREEN_SCORES,
                    help=f"score to rank by (default: {SCREEN_SCORES[0]})")
    sc.add_argument("--keep", type=int, metavar="K", help="mark the K best backbones as kept")
    sc.add_argument("--out", type=Path, help="output folder: screen.csv and the feature cache (cache/) that "
                    "autotransfer search --out reuses (default: reports/DATASET_NAME)")
    sc.add_argument("--zoo", help="local zoo YAML (default: $AUTOTRANSFER_ZOO)")
    sc.add_argument("--storage", help="also store the scores in this Optuna storage (URL), where a later "
                    "'search --screen K' of the same study ranks them again without extracting anything")
    sc.add_argument("--study-name", help="study to store the scores in (with --storage; default: the dataset's name)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the split and the linear probe's folds (default: 0)")
    sc.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_runtime(sc)


def _add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rf = sub.add_parser("refit", help="retrain the best strategy (or --trial N) on train+val with the full budget, "
                        "evaluate it once on test, and save the model")
    _add_study(rf)
    rf.add_argument("--trial", type=int, help="trial number whose strategy to refit (default: the best trial)")
    rf.add_argument("--epochs", type=int, help="epochs (default: the search's --epochs)")
    rf.add_argument("--out", type=Path, required=True, help="folder to save the model in (model.safetensors, "
                    "model.json)")
    rf.add_argument("--train-on", default="auto", choices=["auto", "train", "train+val"], help="auto (default): "
                    "train+val when the dataset has a test split, else train, evaluated once on val")
    _add_stored_inputs(rf)
    ex = sub.add_parser("export", help="export a saved model (autotransfer refit --out) to ONNX")
    ex.add_argument("model", type=Path, help="model folder (from autotransfer refit --out or TransferModel.save)")
    ex.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="ONNX file to write: input 'images' "
                    "(B, 3, H, W), output 'probabilities' (B, K); classes and preprocessing in its metadata")
    pr = sub.add_parser("predict", help="predict the class of images with a saved model; writes a CSV")
    pr.add_argument("model", type=Path, help="model folder (from autotransfer refit --out or TransferModel.save)")
    pr.add_argument("images", nargs="+", help="image files or folders (searched recursively for images)")
    pr.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write, one row per image: "
                    "image, label, one probability column per class (default: predictions.csv)")
    pr.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def _add_common(p: argparse.ArgumentParser, *, n_trials: int, epochs: int, space: str) -> None:
    p.add_argument("--space", default=space, help=f"search space YAML file or bundled name (default: {space})")
    p.add_argument("--n-trials", type=int, default=n_trials, help=f"total trials in the study (default: {n_trials})")
    p.add_argument("--timeout", type=float, help="stop starting new trials after SECONDS")
    p.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs per trial (default: {epochs})")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "balanced_accuracy", "macro_f1"],
                   help="validation metric to maximise (default: accuracy)")
    p.add_argument("--out", type=Path, help="output folder (default: reports/STUDY_NAME)")
    p.add_argument("--zoo", help="local zoo YAML (default: $AUTOTRANSFER_ZOO)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, sampler and trials (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--pruner", default="hyperband", choices=PRUNERS, help="pruner (default: hyperband)")
    p.add_argument("--no-baseline", action="store_true", help="do not run the baselines in a new study: the textbook "
                   "recipe (frozen backbone, Dense(1024) head, lr 1e-4) as its first trial, and AutoGluon's "
                   "fixed image recipe after the search, outside the sampled space")
    p.add_argument("--class-weight", choices=["balanced"], help="weight the training loss by inverse class "
                   "frequency of each training split (scikit-learn's compute_class_weight; default: unweighted)")
    p.add_argument("--dedupe", action="store_true", help="keep one copy of each group of byte-identical images "
                   "and drop copies filed under different classes (label conflicts) when scanning")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (journal file or "
                   "PostgreSQL storage; not SQLite) (default: 1)")
    p.add_argument("--trial-timeout", type=float, metavar="SECONDS", help="end a trial that runs longer than this "
                   "(pruned at its last epoch, or failed before its first)")
    p.add_argument("--heartbeat-interval", type=int, default=60, metavar="SECONDS", help="heartbeat of running "
                   "trials on a database server; a trial silent for twice this is retried (default: 60)")
    p.add_argument("--screen", type=int, metavar="K", help="before the first trial, keep only the K backbones of "
                   "the space with the best --screen-score on their pooled features (default: no screen)")
    p.add_argument("--screen-score", default=SCREEN_SCORES[0], choices=SCREEN_SCORES,
                   help=f"score the screen ranks backbones by (default: {SCREEN_SCORES[0]})")
    _add_confirm(p, repeats_help="repeats per finalist (default: as many, 2 to 5, as fit half of the search's "
                 "compute)")
    p.add_argument("--patience", type=int, metavar="N", help="stop sampling after N finished trials without an "
                   "improvement larger than max(one val image, the tie margin) (default: off)")
    _add_runtime(p)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    """The caches and accelerator flags (a Runtime), shared by search, demo and refit."""
    p.add_argument("--cache-mb", type=float, default=1024.0, metavar="MB", help="memory bound of the cache of "
                   "decoded images and frozen-prefix activations, per worker process (default: 1024)")
    p.add_argument("--no-cache", action="store_true", help="recompute everything: no image, feature (OUT/cache) or "
                   "activation cache (results are the same; for comparison)")
    p.add_argument("--compile", action="store_true", help="torch.compile each trained module (slow to start)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on "
                   "for CUDA devices that support bf16, off on CPU)")


def runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~autotransfer.training.pipeline.Runtime` fields the runtime flags give."""
    return {"cache": not args.no_cache, "cache_mb": args.cache_mb, "compile": args.compile, "amp": args.amp}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 bad input, 130 SIGINT, 143 SIGTERM)."""
    args = build_parser().parse_args(argv)
    # Ctrl+C / `kill -INT` must end the search cleanly even when the shell started us with SIGINT
    # ignored (a background job of a script): restore Python's KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    progress.enable(sys.stderr.isatty() and not args.quiet)  # bars on a terminal only: logs stay plain lines
    if args.command in ("report", "status"):
        return _read_only(args)
    if args.command in ("refit", "predict", "confirm", "screen", "export"):
        from autotransfer.cli.model_commands import (  # PyTorch
            confirm_command,
            export_command,
            predict_command,
            refit_command,
        )
        from autotransfer.cli.screen_command import screen_command

        try:
            if args.command == "screen":
                return screen_command(args, runtime_options(args))
            if args.command == "export":
                return export_command(args)
            if args.command == "confirm":
                with interrupt.graceful_stop(hard_exit=True):
                    return confirm_command(args, runtime_options(args), confirm_options(args))
            return refit_command(args, runtime_options(args)) if args.command == "refit" else predict_command(args)
        except AutotransferError as err:
            print(f"autotransfer: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # files are written atomically at the end: nothing half-written is left
            print(f"\nInterrupted: this {args.command} wrote nothing.", file=sys.stderr)
            return 130
    with interrupt.graceful_stop(hard_exit=True):  # a second signal exits at once
        return _search(args)


def _search(args: argparse.Namespace) -> int:
    from autotransfer.study.search import search
    from autotransfer.training.runtime import Runtime  # imports PyTorch: only the commands that train pay for it

    data = "digits" if args.command == "demo" else args.data
    name = getattr(args, "study_name", None) or ("demo" if args.command == "demo" else Path(data).name)
    out = args.out or Path("reports") / name
    tracker = _Progress(args.n_trials, args.epochs)
    try:
        settings = SearchSettings(
            n_trials=args.n_trials, timeout=args.timeout, trial_timeout=args.trial_timeout, pruner=args.pruner,
            seed=args.seed, device=args.device, storage=getattr(args, "storage", None), study_name=name, out=out,
            workers=args.workers, heartbeat_interval=args.heartbeat_interval, baseline=not args.no_baseline,
            screen=args.screen, screen_score=args.screen_score, patience=getattr(args, "patience", None),
            dedupe=getattr(args, "dedupe", False),
            **confirm_options(args))
        budget = Budget(epochs=args.epochs, batch_size=args.batch_size, metric=args.metric,
                        class_weight=getattr(args, "class_weight", None))
        with progress.bar("trials", total=args.n_trials, unit="trial", leave=True, name="trials") as shown:
            tracker.bar = shown if args.workers == 1 else None  # with workers the callbacks run (pickled) in them
            result = search(data, space=args.space, settings=settings, budget=budget,
                            runtime=Runtime(**runtime_options(args)), zoo=args.zoo, on_epoch=tracker.epoch,
                            callbacks=[tracker])
    except AutotransferError as err:
        print(f"autotransfer: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        why = f"Stopped by {err.signame}" if isinstance(err, interrupt.Interrupted) else "Interrupted"
        print(f"\n{why}: the running trial was recorded as interrupted; finished trials are kept in the "
              f"study, and the leaderboard and report in {out} were rewritten. Run the same command again to "
              "resume.", file=sys.stderr)
        return err.exit_status if isinstance(err, interrupt.Interrupted) else 130
    _print_summary(result, out)
    return 0


def _read_only(args: argparse.Namespace) -> int:
    try:
        study = load_existing_study(args.storage, args.study_name)
    except AutotransferError as err:
        print(f"autotransfer: error: {err}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(format_status(study_status(study)))
        return 0
    folder = OutputFolder.of_storage(args.storage) or OutputFolder(Path("reports") / study.study_name)
    out = args.out or folder.report
    write_report(study, out)
    print(f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {len(study.get_trials(deepcopy=False))} trials "
          f"of study {study.study_name!r}")
    return 0


def _print_summary(result: SearchResult, out: Path) -> None:
    board = result.leaderboard
    if result.dataset is not None and result.dataset.excluded:
        print(f"{len(result.dataset.excluded)} file(s) could not be decoded and were excluded (listed above).")
    print("\nLeaderboard (top 10):")
    show = ["rank", "number", "state", "value", *(c for c in board.columns if c.startswith("params_")), *_SHOW_TRIAL]
    print(board[show].head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best = result.best
    stopped = sampling_stopped(result.study)
    if stopped:
        print(f"\nSampling stopped: {stopped}.")
    if result.decision is not None:
        print()
        print("\n".join(describe_decision(result.decision)))
    elif result.study.user_attrs.get(StudyAttr.CONFIRM_SKIPPED):
        print(f"\nConfirmation skipped: {result.study.user_attrs[StudyAttr.CONFIRM_SKIPPED]}.")
    if best is not None:
        params = {k: best[k] for k in DIMENSIONS if k in best and k != "backbone"}
        label = "Recommended" if result.decision is not None else "Best"
        print(f"\n{label}: trial {best['trial']}, {best['family']}, {describe_params(params)}: val accuracy "
              f"{best['val_accuracy']:.4f} in the search")
    strong = (result.study.user_attrs.get(StudyAttr.STRONG_BASELINE) or {}).get("search") or {}
    if strong.get("value") is not None:
        print(f"Strong baseline (AutoGluon's recipe, outside the space): val {strong['value']:.4f} on the search split")
    folder = OutputFolder(out)
    print(f"Wrote {folder.leaderboard} and {folder.report}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
