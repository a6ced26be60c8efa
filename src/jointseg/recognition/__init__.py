"""Automatic domain (joint) recognition: which training domain a scan belongs to, or none.

- ``features``: what a scan looks like to a domain's path through a network (appearance and
  content descriptors, BN running-statistics distance); :class:`Route`
- ``references``: each domain's measured reference (``domain_reference.json``), its distances
- ``calibration``: refusal threshold and temperature (``domain_calibration.json``)
- ``anatomy``: each domain's anatomy statistics (``anatomy_reference.json``) and how plausible a
  predicted anatomy is as that domain's
- ``decision``: candidates -> a decision (or a refusal); the anatomy rule
- ``recognizer``: a run's recognizer (routes, references, calibration), as prediction uses it
- ``fitting``: references, calibration and anatomy statistics of a trained run
- ``study``: calibration on scans of known domain (a run's own study folder)

It depends on ``models`` and ``data`` only; training and prediction both use it. Nothing is
imported here, so ``import jointseg.recognition`` stays light.
"""
