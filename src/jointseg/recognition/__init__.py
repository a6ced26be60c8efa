"""Automatic domain (joint) recognition: which training domain a scan belongs to, or none.

- ``features``: what a scan looks like to a domain's path through a network (appearance and
  content descriptors, BN running-statistics distance); :class:`Route`
- ``references``: each domain's measured reference (``domain_reference.json``), its distances
- ``calibration``: refusal threshold and temperature (``domain_calibration.json``)
- ``decision``: candidates -> a decision (or a refusal)
- ``recognizer``: a run's recognizer (routes, references, calibration), as prediction uses it
- ``fitting``: references and calibration of a trained run, from its slice caches
- ``study``: calibration on scans of known domain (a run's own study folder)

It depends on ``models`` and ``data`` only; training and prediction both use it. Nothing is
imported here, so ``import jointseg.recognition`` stays light.
"""
