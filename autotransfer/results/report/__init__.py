"""The report: evidence read from the study's storage, plots, and one self-contained HTML page.

``evidence`` computes the tables (pandas, scikit-learn), ``figures`` the plots (Optuna's own
where it has them, plotly otherwise), ``render`` the page (Jinja2, autoescaped) and its atomic
write.
"""

from autotransfer.results.report.evidence import (
    Evidence,
    collect,
    family_ranking,
    learning_curves,
    pareto_front,
    per_class_metrics,
    snapshot,
)
from autotransfer.results.report.render import (
    OutputWriter,
    atomic_write_text,
    render_report,
    write_outputs,
    write_report,
)

__all__ = [
    "Evidence",
    "OutputWriter",
    "atomic_write_text",
    "collect",
    "family_ranking",
    "learning_curves",
    "pareto_front",
    "per_class_metrics",
    "render_report",
    "snapshot",
    "write_outputs",
    "write_report",
]
