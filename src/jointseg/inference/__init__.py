"""Inference: a trained run folder -> label maps, meshes, measurements and previews.

- ``predictor``: :class:`~jointseg.inference.predictor.Predictor` (also ``jointseg.Predictor``),
  the prediction stages composed: read + check, preprocess once, recognize, infer, restore
- ``predict``: ``jointseg predict`` (``predict_path``): the pipeline per scan, then clean, write
- ``writer``: the writer stage, every output of one case (``write_case``, ``_outputs.json``)
- ``slices``: scan checks (``load_scan``), devices, restoration onto the scan's grid
- ``postprocess``: per-structure islands and holes, a run's ``postprocessing.json``
- ``meshes``, ``measurements``, ``label_tables``, ``preview``: the per-case outputs

Nothing is imported here, so ``import jointseg.inference`` stays light.
"""
