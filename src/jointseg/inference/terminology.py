"""What a segment contains, in SNOMED CT: the codes DICOM-SEG and Slicer's ``.seg.nrrd`` carry.

Bones are coded as their bone structure (category *Anatomical Structure*), cartilage and
menisci as themselves; the codes are pydicom's code dictionary entries. A structure without a
code there (growth plates among them) is coded only as an *Anatomical Structure*; its name
stays in the segment's label.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ANATOMICAL_STRUCTURE: Code = codes.cid7150.AnatomicalStructure  # SCT 91723000
TISSUE: Code = codes.cid7150.Tissue  # SCT 85756007

# structure name (lower case) -> (category, type)
KNOWN_TERMS: dict[str, tuple[Code, Code]] = {
    "femur": (ANATOMICAL_STRUCTURE, codes.SCT.Femur),  # 71341001
    "tibia": (ANATOMICAL_STRUCTURE, codes.SCT.Tibia),  # 12611008
    "fibula": (ANATOMICAL_STRUCTURE, codes.SCT.Fibula),  # 87342007
    "patella": (ANATOMICAL_STRUCTURE, codes.SCT.Patella),  # 64234005
    "talus": (ANATOMICAL_STRUCTURE, codes.SCT.Talus),  # 67453005
    "calcaneus": (ANATOMICAL_STRUCTURE, codes.SCT.Calcaneus),  # 80144004
    "humerus": (ANATOMICAL_STRUCTURE, codes.SCT.Humerus),  # 85050009
    "scapula": (ANATOMICAL_STRUCTURE, codes.SCT.Scapula),  # 79601000
    "meniscus": (ANATOMICAL_STRUCTURE, codes.SCT.Meniscus),  # 74135004
    "cartilage": (TISSUE, codes.SCT.Cartilage),  # 309312004
}
KNOWN_TERMS["calcaneum"] = KNOWN_TERMS["calcaneus"]


@dataclass(frozen=True)
class StructureTerm:
    """A segment's coded meaning: its property category and type."""

    category: Code
    type: Code

    @property
    def coded(self) -> bool:
        """Whether the type names the structure itself (not just *an anatomical structure*)."""
        return self.type != ANATOMICAL_STRUCTURE


def structure_term(name: str) -> StructureTerm:
    """The coded meaning of a structure named ``name`` (case and ``_``/``-``/spaces ignored)."""
    key = "".join(c for c in name.lower() if c.isalnum())
    found = KNOWN_TERMS.get(key)
    if found is None:
        return StructureTerm(ANATOMICAL_STRUCTURE, ANATOMICAL_STRUCTURE)
    return StructureTerm(*found)


def slicer_code(code: Code | None) -> str:
    """A code as Slicer's terminology triplet ``scheme^value^meaning`` (``^^`` for none)."""
    if code is None:
        return "^^"
    return f"{code.scheme_designator}^{code.value}^{code.meaning}"


__all__ = [
    "ANATOMICAL_STRUCTURE",
    "KNOWN_TERMS",
    "TISSUE",
    "StructureTerm",
    "slicer_code",
    "structure_term",
]
