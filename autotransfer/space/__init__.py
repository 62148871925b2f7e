"""The strategy space: dimension declarations, strategies and the YAML search spaces (no PyTorch import).

Nothing is re-exported here, so importing a module of this package loads only what it needs.
"""
