"""The ``autotransfer screen`` command: rank backbones by transferability scores, no training.

It loads PyTorch, so it lives apart from :mod:`autotransfer.cli.main`.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from autotransfer.data.dataset import load_dataset
from autotransfer.errors import ConfigError, describe
from autotransfer.files import atomic_write_text
from autotransfer.screen.screen import check_screen, screen
from autotransfer.space.search_space import load_search_space
from autotransfer.storage.backends import make_storage
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.study.screening import check_screen_target, store_screen
from autotransfer.training.runtime import Runtime

__all__ = ["screen_command"]


def screen_command(args: argparse.Namespace, runtime_options: dict[str, Any]) -> int:
    """``autotransfer screen``: score the candidates, print them ranked, write ``OUT/screen.csv``; exit status 0.

    Args:
        args: The parsed command line.
        runtime_options: The runtime flags as :class:`~autotransfer.training.runtime.Runtime` fields; the
            feature cache is ``OUT/cache``, the one ``autotransfer search --out OUT`` uses.

    Raises:
        AutotransferError: Bad options, data or weights (checked before any extraction).
    """
    backbones = args.backbones.split(",") if args.backbones else load_search_space(args.space).backbones
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    except ValueError as err:
        raise ConfigError(describe("resolutions", "comma-separated integers (px)", args.resolutions)) from err
    check_screen(backbones, score=args.score, k=args.keep, resolutions=resolutions)
    if args.study_name and not args.storage:
        raise ConfigError(describe("study_name", "given with --storage (the storage to store the screen in)",
                                   args.study_name))
    dataset = load_dataset(args.data, seed=args.seed)
    study_name = args.study_name or dataset.name
    storage = make_storage(args.storage) if args.storage else None
    if storage is not None:
        check_screen_target(storage, study_name)
    folder = OutputFolder(args.out or Path("reports") / dataset.name)
    folder.create()
    cache_dir = folder.cache if runtime_options["cache"] else None
    result = screen(dataset, backbones, score=args.score, k=args.keep, resolutions=resolutions, zoo=args.zoo,
                    device=args.device, runtime=Runtime(**runtime_options, cache_dir=cache_dir), seed=args.seed)
    buffer = io.StringIO()
    result.table.to_csv(buffer, index=False, float_format="%.6g")
    atomic_write_text(folder.screen, buffer.getvalue())
    print(f"\nBackbones ranked by {args.score} ({len(dataset.splits['train'])} train, "
          f"{len(dataset.splits['val'])} val images):")
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.keep is not None:
        print(f"\nKept ({args.keep}): {', '.join(result.kept)}; search them with --screen {args.keep} "
              f"--screen-score {args.score} --out {folder.path}")
    print(f"Wrote {folder.screen}")
    if storage is not None:
        store_screen(storage, study_name, result)
        print(f"Stored the scores in study {study_name!r} of {args.storage}: 'autotransfer search ... --storage "
              f"{args.storage} --study-name {study_name} --screen K' ranks them without extracting again")
    return 0
