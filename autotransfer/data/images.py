"""Images given by the caller: paths, PIL images or arrays, as ``predict`` and ``TransferClassifier`` take them.

A single image is a file path (``str`` or ``os.PathLike``), a PIL image, or a NumPy array of
shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` holding ``uint8`` values (0-255) or
floats in [0, 1]. Every image becomes RGB, as the dataset scan makes it (:func:`autotransfer.data.dataset.open_image`).

:func:`images_dataset` turns such a collection and its labels into an :class:`~autotransfer.data.dataset.ImageDataset`
so that a search can run on it: paths are used in place, in-memory images are written once as
lossless PNG files (so that the trials' caches, which key on files, work unchanged).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from autotransfer.data.dataset import DECODE_ERRORS, ImageDataset, decode_error, stratified_split
from autotransfer.errors import DataError, describe

__all__ = ["ImageLike", "as_image_list", "images_dataset", "to_pil"]

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]
_ACCEPTED = "an image path, a PIL image, or an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"


def as_image_list(images: Any) -> list[Any]:
    """The images of ``images`` as a list: one path or PIL image becomes a list of one.

    Args:
        images: A path, a PIL image, or a sequence of them and of arrays (a NumPy array is read
            as a sequence along its first axis, so ``(N, H, W)`` and ``(N, H, W, 3)`` batches work).

    Raises:
        DataError: ``images`` is empty, a lone 2-D array (wrap a single array image in a list), or
            not a collection of images.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim < 3:
            raise DataError(describe("images", "a sequence of images; wrap a single array image in a list, "
                                     "or pass a batch of shape (N, H, W) or (N, H, W, C)", f"array {images.shape}"))
        return list(images)
    if not isinstance(images, Iterable) or isinstance(images, (bytes, dict)):
        raise DataError(describe("images", f"{_ACCEPTED}, or a sequence of them", type(images).__name__))
    items = list(images)
    if not items:
        raise DataError(describe("images", "a non-empty sequence of images", images))
    return items


def to_pil(item: Any, index: int = 0) -> Image.Image:
    """One image as an RGB PIL image.

    Args:
        item: A path, a PIL image or an array (see the module docstring).
        index: Its position in the caller's sequence, for error messages.

    Raises:
        DataError: The file cannot be decoded, or the object is not an accepted image.
    """
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as img:
                return img.convert("RGB")
        except DECODE_ERRORS as err:
            raise DataError(f"Image {index} ({os.fspath(item)!r}) cannot be read: {type(err).__name__}: {err}") from err
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        return Image.fromarray(_uint8_pixels(item, index)).convert("RGB")
    raise DataError(describe(f"images[{index}]", _ACCEPTED, type(item).__name__))


def _uint8_pixels(array: np.ndarray, index: int) -> np.ndarray:
    """``array`` as contiguous uint8 pixels of shape (H, W), (H, W, 3) or (H, W, 4)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or 0 in array.shape:
        raise DataError(describe(f"images[{index}]", "an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)",
                                 f"shape {array.shape}"))
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "fiub":
        low, high = float(np.min(array)), float(np.max(array))
        floats = array.dtype.kind == "f"
        top = 1.0 if floats else 255.0
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= top):
            raise DataError(describe(f"images[{index}]", "uint8 pixels (0-255) or floats in [0, 1]",
                                     f"{array.dtype} values in [{low:g}, {high:g}]"))
        scaled = np.round(array.astype(np.float64) * 255.0) if floats else array
        return np.ascontiguousarray(scaled.astype(np.uint8))
    raise DataError(describe(f"images[{index}]", "uint8 pixels (0-255) or floats in [0, 1]", f"dtype {array.dtype}"))


def images_dataset(images: Sequence[Any], labels: Sequence[int], classes: Sequence[str], *, folder: str | Path,
                   seed: int = 0, val_fraction: float = 0.2, name: str = "images") -> ImageDataset:
    """A dataset over caller-given images, split into train and val (stratified, seeded; no test split).

    Args:
        images: One image per sample (path, PIL image or array; see the module docstring).
        labels: Class index of every image, in ``range(len(classes))``.
        classes: Class names.
        folder: Where in-memory images are written as PNG files; it must outlive the dataset's use.
        seed: Seed of the split (scikit-learn's ``train_test_split``).
        val_fraction: Fraction of the images held out for validation (at least one per class).
        name: The dataset's name (the default study name).

    Raises:
        DataError: Lengths differ, a label is out of range, a class has fewer than two images, a
            file cannot be decoded (all such files are named), or an image is not accepted.
    """
    items = as_image_list(images)
    if len(items) != len(labels):
        raise DataError(f"Got {len(items)} images but {len(labels)} labels; give one label per image.")
    if not 0 < val_fraction < 1:
        raise DataError(describe("val_fraction", "a fraction in (0, 1)", val_fraction))
    bad_labels = sorted({int(y) for y in labels if not 0 <= int(y) < len(classes)})
    if bad_labels:
        raise DataError(describe("labels", f"class indices in [0, {len(classes) - 1}]", bad_labels[:5]))
    counts = Counter(int(y) for y in labels)
    few = [classes[k] for k in range(len(classes)) if counts[k] < 2]
    if len(classes) < 2 or few:
        raise DataError(f"Every class needs at least two images (one to train on, one to validate) and there must "
                        f"be at least two classes; got {dict(sorted((classes[k], n) for k, n in counts.items()))}.")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = _materialise(items, out)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    samples = [(p.relative_to(root).as_posix(), int(y)) for p, y in zip(paths, labels, strict=True)]
    splits = stratified_split(samples, len(classes), seed, val_fraction, 0.0)
    return ImageDataset(name, str(root), tuple(classes), splits, [], "stratified", seed)


def _materialise(items: list[Any], folder: Path) -> list[Path]:
    """Resolved paths of every image: files checked in place, in-memory images written as PNG."""
    paths: list[Path] = []
    unreadable: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            path = Path(item).expanduser().resolve()
            reason = decode_error(path)  # decoded once here, as the dataset scan does
            if reason:
                unreadable.append(f"{index}: {path}: {reason}")
            paths.append(path)
            continue
        image = to_pil(item, index)
        pixels = np.asarray(image)
        digest = hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:12]
        path = folder / f"{index:06d}-{digest}.png"  # the index keeps equal images apart, the hash ties key to content
        if not path.is_file():
            image.save(path, format="PNG")
        paths.append(path.resolve())
    if unreadable:
        raise DataError(f"{len(unreadable)} image file(s) cannot be decoded: " + "; ".join(unreadable[:5]))
    return paths
