"""Storage (no PyTorch import): Optuna storages (``backends``), the stored-record schema (``records``) and the
output folder (``output_folder``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
