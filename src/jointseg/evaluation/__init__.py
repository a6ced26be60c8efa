"""Evaluation: 3D metrics, paired statistics, reports, the postprocessing decision.

Modules (imported on demand, so that importing one does not load MONAI or matplotlib):

- ``metrics``: per-structure Dice, sensitivity, specificity, MSSD, HD95, RAVD (``score_case``)
- ``evaluate``: ``jointseg evaluate`` (``evaluate_run``)
- ``statistics``: Wilcoxon signed-rank, rank-biserial correlation, Holm
- ``report``: summaries, tables, box plots, overlays, ``report.md``
- ``compare``: ``jointseg compare`` (``compare_runs``)
- ``postprocessing``: ``jointseg postprocess``, decided on validation subjects
"""
