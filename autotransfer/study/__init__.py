"""The study: the ``search`` entry point, the trial objective, worker processes, crash recovery, the sampler
and pruner, and refit.

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
