"""Deployment: a trained strategy as a model people use, save and load (``model``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
