"""Training: the trainer (``trainer``), what a trial trains on (``input_plan``), the image pipeline
(``pipeline``), caches (``cache``) and the machine settings (``runtime``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
