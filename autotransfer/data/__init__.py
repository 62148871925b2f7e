"""Datasets: scan, validate and split labelled image folders (``dataset``), and caller-given images
(``images``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
