"""Named fault points: a test kills the process with SIGKILL at a chosen point of a real run.

``JOINTSEG_FAULT_AT=<name>`` (or ``<name>@<n>``, the n-th time the point is reached, from 1)
makes :func:`fault_point` send SIGKILL to its own process there. Unset (always, outside the
fault tests), a fault point costs one environment look-up.

Points: ``prior.step`` (a shape-prior pre-training step), ``train.step`` (a training step),
``preprocess.case`` (a case written into a slice cache being built), ``synth.case`` (a subject
written), ``predict.case`` (a scan's outputs written), and ``write:<file name>`` (a file fully
written under its temporary name, not yet renamed into place; see :mod:`jointseg.utils.atomic`).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "JOINTSEG_FAULT_AT"
_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``JOINTSEG_FAULT_AT`` names this point (and its count is due)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
