"""Models: pretrained backbones from the local zoo or timm (``zoo``), the backbone with its new head and
freezing (``network``), and the frozen prefix whose activations are cached (``frozen_prefix``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
