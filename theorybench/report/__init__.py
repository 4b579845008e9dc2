"""Build ``reports/`` from stored cell records only: tables (markdown + CSV) and figures.

Modules: ``common`` (tables, stored curves, the MMSE bracket; the base every section
imports), ``main`` (the study entries: MSE, KL, rates, shuffled; :func:`build_report`
assembles every section) and one module per section of a side analysis: ``training``,
``jacobian``, ``memorization``, ``machines``, ``dimension``; ``seeds`` sets this run beside
runs of the same study at other seeds (``--compare``).
"""

from .main import build_report

__all__ = ["build_report"]
