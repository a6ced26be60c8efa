"""Inference: a trained run folder -> label maps, meshes, measurements and previews.

- ``predictor``: :class:`~jointseg.inference.predictor.Predictor` (also ``jointseg.Predictor``)
- ``predict``: ``jointseg predict`` (``predict_path``, ``write_case``)
- ``domain``, ``calibration``: automatic domain recognition from BN statistics
- ``slices``: input checks, slice grids, flips, head outputs, restoration helpers
- ``postprocess``: per-structure islands and holes, a run's ``postprocessing.json``
- ``meshes``, ``measurements``, ``label_tables``, ``preview``: the per-case outputs

Nothing is imported here, so ``import jointseg.inference`` stays light.
"""
