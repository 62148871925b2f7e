"""Results, read from a study's storage only and never importing PyTorch: the leaderboard (``leaderboard``),
progress (``status``) and the HTML report (``report``).

Nothing is re-exported here: import from the modules, so that importing one loads only what it needs.
"""
