"""The ``autotransfer`` command line (``main``) and its commands that load PyTorch (``model_commands``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
