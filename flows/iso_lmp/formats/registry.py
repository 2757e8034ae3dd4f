"""The registry of the seven ISOs' raw file formats (each a reader on
:class:`flows.iso_lmp.base.IsoFormat`), by ISO id."""

from __future__ import annotations

from flows.iso_lmp.base import IsoFormat
from flows.iso_lmp.formats.caiso import Caiso
from flows.iso_lmp.formats.ercot import Ercot
from flows.iso_lmp.formats.isone import Isone
from flows.iso_lmp.formats.miso import Miso
from flows.iso_lmp.formats.nyiso import Nyiso
from flows.iso_lmp.formats.pjm import Pjm
from flows.iso_lmp.formats.spp import Spp

ISOS: dict[str, IsoFormat] = {
    fmt.iso_id: fmt for fmt in (Miso(), Pjm(), Caiso(), Nyiso(), Spp(), Isone(), Ercot())
}


def iso_format(iso: str) -> IsoFormat:
    """The reader of an ISO by id (case-insensitive; ``ISO-NE`` and ``ISONE`` both work)."""
    key = iso.upper().replace("-", "")
    if key not in ISOS:
        raise KeyError(f"unknown ISO {iso!r}; known: {', '.join(ISOS)}")
    return ISOS[key]


__all__ = ["ISOS", "iso_format"]
