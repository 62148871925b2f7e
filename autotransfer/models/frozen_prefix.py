"""The frozen prefix of a partly frozen backbone, as a module whose output can be cached.

Freezing is by timm block groups from the stem (:mod:`autotransfer.models.network`), so the frozen
modules of most convolutional backbones (ResNet, EfficientNet, MobileNet, ConvNeXt stages) are a
leading run of the modules ``forward_features`` calls one after another. This module finds that
run by walking the backbone's children in registration order (descending into ``nn.Sequential``),
and proves it on real images: ``features(x)`` must equal ``features'(prefix(x))``, where
``features'`` is the network with the prefix modules swapped for ``nn.Identity``. Architectures
whose forward is not such a chain (a ViT adds position embeddings between its frozen modules) fail
the proof and train on images, uncached.

timm has no API to run a model from an intermediate activation (``forward_intermediates`` stops
early but cannot resume), so the split is written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from autotransfer.models.network import BackboneWithHead, Slot, leading_frozen, module_chain

__all__ = ["FrozenPrefix", "find_frozen_prefix"]

@dataclass
class FrozenPrefix:
    """The leading frozen modules of ``net.backbone``.

    Attributes:
        net: The transfer model.
        slots: ``(parent, name, module)`` of every prefix module, in forward order.
    """

    net: BackboneWithHead
    slots: list[Slot]

    @property
    def n_modules(self) -> int:
        """Number of modules in the prefix."""
        return len(self.slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prefix's output for normalised images ``(B, 3, H, W)``; the modules run in eval mode."""
        for _, _, module in self.slots:
            module.eval()
            x = module(x)
        return x

    @contextmanager
    def removed(self) -> Iterator[BackboneWithHead]:
        """The network with the prefix modules replaced by ``nn.Identity``: it maps the prefix's
        output to logits. The modules are put back on exit, even on errors."""
        for parent, name, _ in self.slots:
            setattr(parent, name, nn.Identity())
        try:
            yield self.net
        finally:
            for parent, name, module in self.slots:
                setattr(parent, name, module)

    def verify(self, x: torch.Tensor, *, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
        """Whether the split reproduces ``net.features`` on the images ``x`` ``(B, 3, H, W)``."""
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                expected = self.net.features(x)
                with self.removed() as rest:
                    got = rest.features(self.forward(x))
            return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=rtol, atol=atol))
        except (RuntimeError, TypeError, ValueError, AttributeError):  # the chain is not how forward runs
            return False
        finally:
            self.net.train(was_training)


def find_frozen_prefix(net: BackboneWithHead) -> FrozenPrefix | None:
    """The leading run of fully frozen modules of ``net.backbone``, or None if it holds no parameters
    or covers the whole backbone (a linear probe caches pooled features instead)."""
    chain = module_chain(net.backbone)
    slots = leading_frozen(chain)
    if len(slots) == len(chain) or not any(p.numel() for _, _, m in slots for p in m.parameters()):
        return None
    return FrozenPrefix(net, slots)
