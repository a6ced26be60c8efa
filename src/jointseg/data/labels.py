"""The union label space over several datasets: structures merged by name.

Dataset ``d`` has local labels 0..C_d-1 (0 = background, then its structures in label-value
order). The union has background at 0 and one channel per distinct structure name, in order of
first appearance over the datasets. The shared scheme's single head and the multi-joint shape
prior both work in this space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DomainLabels:
    """One domain's structures: names and on-disk label values (background excluded)."""

    name: str
    structures: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.structures) + 1

    def local_lookup(self) -> np.ndarray:
        """Array mapping on-disk label values to local class indices 0..C-1."""
        size = max(self.structures.values(), default=0) + 1
        lut = np.zeros(size, dtype=np.int64)
        for index, value in enumerate(self.structures.values(), start=1):
            lut[value] = index
        return lut

    def disk_values(self) -> np.ndarray:
        """Array mapping local class indices 0..C-1 back to on-disk label values."""
        return np.asarray([0, *self.structures.values()], dtype=np.int64)


class LabelSpace:
    """Union of several domains' structures, merged by name."""

    def __init__(self, domains: list[DomainLabels]):
        self.domains = list(domains)
        names: list[str] = []
        for domain in self.domains:
            for structure in domain.structures:
                if structure not in names:
                    names.append(structure)
        self.structure_names = names

    @property
    def num_classes(self) -> int:
        return len(self.structure_names) + 1

    def domain_index(self, name: str) -> int:
        for index, domain in enumerate(self.domains):
            if domain.name == name:
                return index
        known = ", ".join(d.name for d in self.domains)
        raise KeyError(f"unknown domain {name!r}; known domains: {known}")

    def local_to_union(self, domain: int) -> np.ndarray:
        """For domain ``domain``: local class index -> union class index."""
        names = list(self.domains[domain].structures)
        return np.asarray([0, *(1 + self.structure_names.index(n) for n in names)], dtype=np.int64)

    def union_channels(self, name: str) -> tuple[int, ...]:
        """The union classes of domain ``name``'s local classes, background first."""
        return tuple(int(c) for c in self.local_to_union(self.domain_index(name)))

    def union_to_local(self, domain: int) -> np.ndarray:
        """For domain ``domain``: union class index -> local index (0 for foreign structures)."""
        lut = np.zeros(self.num_classes, dtype=np.int64)
        for local, union in enumerate(self.local_to_union(domain)):
            lut[union] = local
        return lut

    def local_to_union_table(self, names: Sequence[str]) -> np.ndarray:
        """[len(names), max local classes]: row ``i`` maps domain ``names[i]``'s local classes
        to union classes (padded with 0 beyond its classes)."""
        return lookup_table([self.local_to_union(self.domain_index(n)) for n in names], fill=0)

    def head_to_union(self, names: Sequence[str], union_head: bool) -> dict[int, np.ndarray]:
        """Head index -> the union class of each of its output channels, for a model trained on
        domains ``names``: one head over the union (``union_head``, the identity), or one head
        per domain over its local classes."""
        if union_head:
            return {0: np.arange(self.num_classes, dtype=np.int64)}
        return {h: self.local_to_union(self.domain_index(n)) for h, n in enumerate(names)}

    def masks_to_union(self, masks: np.ndarray, domain: int) -> np.ndarray:
        """Domain ``domain``'s LOCAL class masks as union classes (uint8); a class beyond the
        domain's classes is a ``ValueError``."""
        lut = self.local_to_union(domain)
        masks = np.asarray(masks)
        if masks.size and int(masks.max()) >= lut.size:
            raise ValueError(
                f"domain {self.domains[domain].name!r}: mask class {int(masks.max())} "
                f"beyond its {lut.size} local classes"
            )
        return lut[masks].astype(np.uint8)


def lookup_table(rows: Sequence | Mapping[int, Sequence], fill: int = 0) -> np.ndarray:
    """Class lookups stacked into one [rows, widest] int64 table, padded with ``fill``: row
    ``h`` maps class ``c`` to ``table[h, c]``. A mapping's keys are the row indices (missing rows
    are all ``fill``)."""
    items = dict(rows) if isinstance(rows, Mapping) else dict(enumerate(rows))
    arrays = {h: np.asarray(r, dtype=np.int64).reshape(-1) for h, r in items.items()}
    width = max((a.size for a in arrays.values()), default=0)
    table = np.full((max(arrays, default=-1) + 1, width), fill, dtype=np.int64)
    for h, array in arrays.items():
        table[h, : array.size] = array
    return table
