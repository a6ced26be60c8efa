"""Validation on whole held-out subjects: 3D Dice per structure in the preprocessed space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class ValidationCase:
    domain: int
    case_id: str
    rows: np.ndarray


class CaseDataset(Dataset):
    """Whole validation subjects: every slice of a case as one item (no collation).

    ``image`` is the case's slice stack [S, H, W]; the network's input is built from it chunk by
    chunk (:func:`~jointseg.data.context.context_stack`), as at prediction.
    """

    def __init__(self, caches, cases: list[ValidationCase]):
        self.caches = caches
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        cache = self.caches[case.domain]
        rows = np.sort(case.rows)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(cache.images[rows])),
            "label": torch.from_numpy(np.ascontiguousarray(cache.labels[rows]).astype(np.int64)),
            "domain": case.domain,
            "case": case.case_id,
        }
