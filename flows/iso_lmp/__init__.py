"""The seven US electricity markets' LMP files to one Parquet dataset (workload iso_lmp).

Pure modules (no prefect): ``base`` (markets, schema, time rules), one reader per ISO,
``samples`` (raw files in the published formats), ``dataset`` (staging and atomic
publication per partition), ``fetch`` (downloads). ``flow`` holds the Prefect flow.
"""

from __future__ import annotations

from flows.iso_lmp.base import CANONICAL_COLUMNS, IsoFormat, IsoParseError, Market
from flows.iso_lmp.caiso import Caiso
from flows.iso_lmp.ercot import Ercot
from flows.iso_lmp.isone import Isone
from flows.iso_lmp.miso import Miso
from flows.iso_lmp.nyiso import Nyiso
from flows.iso_lmp.pjm import Pjm
from flows.iso_lmp.spp import Spp

ISOS: dict[str, IsoFormat] = {
    fmt.iso_id: fmt for fmt in (Miso(), Pjm(), Caiso(), Nyiso(), Spp(), Isone(), Ercot())
}


def iso_format(iso: str) -> IsoFormat:
    """The reader of an ISO by id (case-insensitive; ``ISO-NE`` and ``ISONE`` both work)."""
    key = iso.upper().replace("-", "")
    if key not in ISOS:
        raise KeyError(f"unknown ISO {iso!r}; known: {', '.join(ISOS)}")
    return ISOS[key]


__all__ = ["CANONICAL_COLUMNS", "ISOS", "IsoFormat", "IsoParseError", "Market", "iso_format"]
