"""Run report (HTML + plots) from the run directory. Reads files only: imports nothing but posttrain.data."""
from posttrain.report.html import render_report

__all__ = ["render_report"]
