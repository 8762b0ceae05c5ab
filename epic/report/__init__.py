"""Tables and figures built from datasets and result files."""

from epic.report.figures import plot_sample

__all__ = ["plot_sample"]
