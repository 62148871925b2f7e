"""Data hygiene at scan time: byte-identical files, label conflicts, leakage across splits, image sizes,
class imbalance.

Real folders hold copies: the bundled flowers folder has six byte-identical pairs, four of them filed
under two classes. A stratified split spreads such copies over train, val and test, so the same image
is trained on and scored (leakage that inflates every score), and a copy filed under two classes is a
label the data contradicts. The scan already decodes every file; it also hashes its bytes (SHA-256),
and this module groups identical files and says what they are:

* ``same class``: copies with one label (harmless for training, leakage across splits);
* ``label conflict``: copies filed under different classes (at least one label is wrong).

:func:`dedupe` keeps one copy of each same-class group (the one in test, else val, else train, so no
evaluation image is trained on) and drops every copy of a label-conflicted one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["IMBALANCE_RATIO", "SMALL_IMAGE_FACTOR", "dedupe", "describe_hygiene", "duplicate_groups", "hygiene_record",
           "size_summary"]

Sample = tuple[str, int]

_SPLIT_PRIORITY = ("test", "val", "train")  # which copy dedupe keeps: never one an evaluation split also holds
MAX_GROUPS = 500
"""Duplicate groups listed in the stored record (a study attribute); the counts cover every group."""
IMBALANCE_RATIO = 3.0
"""A largest class at least this many times the smallest is called out."""
SMALL_IMAGE_FACTOR = 2.0
"""Images whose median side is this many times smaller than the backbone's input are called out."""


def duplicate_groups(digests: Mapping[str, str], splits: Mapping[str, Sequence[Sample]],
                     classes: Sequence[str]) -> list[dict[str, Any]]:
    """Groups of byte-identical files.

    Args:
        digests: SHA-256 hex digest of every scanned file, by sample key.
        splits: ``{split: [(key, label), ...]}``.
        classes: Class names (labels index them).

    Returns:
        One ``{"sha256", "kind", "files": [[key, class, split], ...], "splits": [...]}`` per group of
        two or more files, ``kind`` ``"same class"`` or ``"label conflict"``; sorted by first key.
    """
    by_digest: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for split, items in splits.items():
        for key, label in items:
            if key in digests:
                by_digest[digests[key]].append((key, label, split))
    groups = []
    for digest, members in by_digest.items():
        if len(members) < 2:
            continue
        members.sort()
        labels = {label for _, label, _ in members}
        groups.append({"sha256": digest, "kind": "same class" if len(labels) == 1 else "label conflict",
                       "files": [[key, classes[label], split] for key, label, split in members],
                       "splits": sorted({split for _, _, split in members})})
    return sorted(groups, key=lambda g: g["files"][0][0])


def dedupe(splits: Mapping[str, Sequence[Sample]], groups: Sequence[Mapping[str, Any]]
           ) -> tuple[dict[str, list[Sample]], list[str]]:
    """Keep one copy of each same-class group, drop every copy of a label conflict.

    Returns:
        ``(splits, dropped)``: the splits without the dropped keys, and the dropped keys (sorted).
    """
    dropped: set[str] = set()
    for group in groups:
        files = group["files"]
        if group["kind"] == "label conflict":
            dropped.update(key for key, _, _ in files)
            continue
        keep = min(files, key=lambda f: (_SPLIT_PRIORITY.index(f[2]) if f[2] in _SPLIT_PRIORITY else 3, f[0]))
        dropped.update(key for key, _, _ in files if key != keep[0])
    kept = {split: [item for item in items if item[0] not in dropped] for split, items in splits.items()}
    return kept, sorted(dropped)


def size_summary(sizes: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    """Median, smallest and largest ``[width, height]`` in pixels (each over all images; {} for none)."""
    if not sizes:
        return {}
    array = np.asarray(sizes, dtype=float)
    return {"median": [int(v) for v in np.median(array, axis=0)], "min": [int(v) for v in array.min(axis=0)],
            "max": [int(v) for v in array.max(axis=0)]}


def hygiene_record(groups: list[dict[str, Any]], sizes: Sequence[tuple[int, int]], n_hashed: int,
                   dropped: list[str] | None, class_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What the scan found, as stored with the study and shown by the CLI and the report (the first
    :data:`MAX_GROUPS` groups listed; the counts cover all of them)."""
    return {"files_hashed": n_hashed, "duplicates": groups[:MAX_GROUPS], "n_groups": len(groups),
            "class_counts": dict(class_counts or {}),
            "same_class": sum(g["kind"] == "same class" for g in groups),
            "label_conflicts": sum(g["kind"] == "label conflict" for g in groups),
            "across_splits": sum(len(g["splits"]) > 1 for g in groups),
            "dedupe": None if dropped is None else {"dropped": dropped}, "sizes": size_summary(sizes)}


def describe_hygiene(record: Mapping[str, Any], input_side: int | None = None) -> list[str]:
    """One line per finding, for the command line (empty when there is nothing to say).

    Args:
        record: From :func:`hygiene_record`.
        input_side: The smallest input side (px) of the backbones searched, for the small-image note.
    """
    lines = []
    groups = record.get("duplicates") or []
    if groups:
        dedupe_note = record.get("dedupe")
        action = (f"--dedupe dropped {len(dedupe_note['dropped'])} file(s)" if dedupe_note
                  else "pass --dedupe to keep one copy of each and drop label-conflicted ones")
        n_groups = record.get("n_groups", len(groups))
        lines.append(f"{n_groups} group(s) of byte-identical files: {record['same_class']} within a class, "
                     f"{record['label_conflicts']} across classes (label conflicts), {record['across_splits']} "
                     f"spread across splits (leakage); {action}.")
        for group in groups[:5]:
            lines.append(f"  {group['kind']}: " + ", ".join(f"{key} ({cls}, {split})" for key, cls, split in
                                                             group["files"]))
    counts = record.get("class_counts") or {}
    if counts and min(counts.values()) > 0 and max(counts.values()) >= IMBALANCE_RATIO * min(counts.values()):
        large, small = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
        lines.append(f"Classes are imbalanced: {large!r} has {counts[large]} images, {small!r} {counts[small]} "
                     f"({counts[large] / counts[small]:.1f}x); consider --metric balanced_accuracy, and "
                     "--class-weight balanced.")
    median = (record.get("sizes") or {}).get("median")
    if median and input_side and max(median) * SMALL_IMAGE_FACTOR <= input_side:
        factor = (input_side / max(median)) ** 2
        lines.append(f"Most images are small (median {median[0]}x{median[1]} px) against the backbone's "
                     f"{input_side} px input: each is upscaled, about {factor:.0f} times the compute its pixels "
                     "need; consider a smaller input_size in the search space.")
    return lines
