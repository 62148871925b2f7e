"""ONNX export of a trained :class:`~autotransfer.deploy.model.TransferModel`.

The network is rebuilt under ``timm.layers.set_layer_config(exportable=True)``, so TensorFlow "same"
padding (the zoo's MobileNets use ``pad_type: same``) becomes timm's static, exportable form for the
model's fixed input size, loaded with the trained weights, and exported by ``torch.onnx.export`` with the
dynamo exporter: weights inside the file, a dynamic batch dimension, softmax probabilities as the output.
The class names and the preprocessing go into the ONNX model's metadata (``metadata_props``), so a
runtime needs nothing else: resize and centre-crop as ``autotransfer.preprocessing`` says, scale to
[0, 1], subtract ``mean``, divide by ``std``, feed ``images`` of shape ``(B, 3, H, W)`` float32, read
``probabilities`` ``(B, K)`` whose column ``k`` is ``autotransfer.classes[k]``.

Needs the ``onnx`` extra (``pip install "autotransfer[onnx]"``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm.layers
import torch
from torch import nn

from autotransfer._version import __version__
from autotransfer.errors import ConfigError, ModelError
from autotransfer.models.network import BackboneWithHead

if TYPE_CHECKING:
    from autotransfer.deploy.model import TransferModel

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "read_metadata"]

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OPSET = 18  # the dynamo exporter's default opset (torch 2.5+)


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images), dim=1)


def _exportable_net(model: TransferModel) -> nn.Module:
    """The model's network rebuilt with exportable layers and its trained weights, in eval mode, on the CPU."""
    with timm.layers.set_layer_config(exportable=True):
        backbone = model.backbone.create()
    net = BackboneWithHead.build(backbone, float(model.strategy["freeze_depth"]), int(model.strategy["head_width"]),
                                 model.n_classes)
    net.load_state_dict({k: v.detach().cpu() for k, v in model.net.state_dict().items()}, strict=True)
    return _Probabilities(net).eval()


def export_onnx(model: TransferModel, path: str | Path) -> Path:
    """Write ``model`` as an ONNX file (atomically: a crash leaves no half-written file).

    Args:
        model: The trained model.
        path: The ``.onnx`` file to write (its folder is created).

    Returns:
        The path written.

    Raises:
        ConfigError: The ``onnx`` extra is not installed.
        ModelError: The exporter failed (the message names the architecture).
    """
    try:
        import onnx
    except ImportError as err:
        raise ConfigError("ONNX export needs the onnx extra: pip install 'autotransfer[onnx]' "
                          "(onnx, onnxscript, onnxruntime).") from err
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    net = _exportable_net(model)
    example = torch.zeros((2, *model.input_size))
    with torch.inference_mode():
        net(example)  # the static "same" padding is sized on the first forward
    try:
        program = torch.onnx.export(net, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
                                    opset_version=OPSET, verbose=False)
    except Exception as err:  # the exporter raises many kinds
        raise ModelError(f"torch.onnx.export could not export {model.backbone.architecture!r}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0][:500]}") from err
    assert program is not None  # dynamo=True returns the ONNXProgram
    proto = program.model_proto
    for key, value in metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        onnx.save_model(proto, temporary, save_as_external_data=False)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def metadata(model: TransferModel) -> dict[str, str]:
    """The ONNX metadata of ``model``: classes, preprocessing, strategy and versions, as JSON strings."""
    preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}
    return {"autotransfer.version": __version__, "autotransfer.classes": json.dumps(list(model.classes)),
            "autotransfer.preprocessing": json.dumps(preprocessing),
            "autotransfer.strategy": json.dumps(model.strategy),
            "autotransfer.input": INPUT_NAME, "autotransfer.output": OUTPUT_NAME}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The autotransfer metadata of an exported ONNX file, JSON decoded (``classes``, ``preprocessing``, ...)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith("autotransfer."):
            key = entry.key.removeprefix("autotransfer.")
            out[key] = entry.value if key in ("version", "input", "output") else json.loads(entry.value)
    return out
