"""Sample MITMA daily OD files in the published format and layout, plus their RSS feed.

The real files cannot be downloaded from these machines, so tests, the demo and the
benchmark use generated ones: gzip CSV, ``|`` delimiter, the 15 published columns, ``NA``
for missing values, under ``estudios_basicos/por-<zone>/viajes/ficheros-diarios/YYYY-MM/``.
Generation is vectorised (numpy -> Arrow -> CSV writer) and deterministic for a seed; every
file's truth (rows that should load, sum of ``viajes``, lines that should be rejected) is
returned so that tests never compute expected figures by hand.
"""

from __future__ import annotations

import email.utils
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from xml.sax.saxutils import escape

from flows.mitma_od.discover import daily_name, daily_relpath
from flows.mitma_od.schema import COLUMNS, ZONE_TYPES
from headroom.storage import publishing

log = logging.getLogger(__name__)

# Zones per zone type in the real study (FORMATS.md).
ZONE_COUNTS = {"distritos": 3_900, "municipios": 2_700, "GAU": 2_200}
# fmt: off
FOREIGN_ZONES = ("FR102", "FR105", "FR108", "FR612", "FR623", "FR626", "PT111", "PT112",
                 "PT11A", "PT150", "PT170", "PT181")
DISTANCES = ("0.5-2", "2-10", "10-50", ">50")
DISTANCE_WEIGHTS = (0.38, 0.37, 0.19, 0.06)
DISTANCE_KM = ((0.5, 2.0), (2.0, 10.0), (10.0, 50.0), (50.0, 400.0))
ACTIVITIES = ("casa", "trabajo_estudio", "frecuente", "no_frecuente")
ACTIVITY_WEIGHTS = (0.42, 0.24, 0.2, 0.14)
INCOMES = ("<10", "10-15", ">15", "NA")
INCOME_WEIGHTS = (0.3, 0.4, 0.2, 0.1)
AGES = ("0-25", "25-45", "45-65", "65-100", "NA")
AGE_WEIGHTS = (0.2, 0.32, 0.3, 0.13, 0.05)
SEXES = ("hombre", "mujer", "NA")
SEX_WEIGHTS = (0.48, 0.48, 0.04)
# Trips by hour of day: a night trough, morning and evening peaks.
HOUR_WEIGHTS = (1, 0.6, 0.4, 0.3, 0.4, 0.9, 2.4, 5.2, 7.4, 6.1, 5.6, 5.8, 6.3, 6.6, 6.9,
                5.9, 6.0, 6.8, 7.2, 6.6, 5.3, 3.6, 2.4, 1.6)
# fmt: on
BATCH_ROWS = 262_144
# Lines a broken exporter might write: wrong hour, unknown si/no, a missing column, text trips.
BAD_LINE_KINDS = ("hour", "flag", "short", "number")


@dataclass(frozen=True)
class SampleFile:
    """One generated daily file and the truth about it."""

    zone_type: str
    day: date
    relpath: str
    kind: str
    """``ok``, ``corrupt_gzip`` (truncated mid-stream) or ``wrong_header`` (no ``sexo``)."""
    rows: int
    """Rows that should load (bad lines excluded)."""
    viajes: Decimal
    viajes_km: Decimal
    bad_lines: tuple[int, ...] = ()
    """1-based line numbers (the header is line 1) of lines that should be rejected."""

    @property
    def name(self) -> str:
        return daily_name(self.zone_type, self.day)

    @property
    def loadable(self) -> bool:
        return self.kind == "ok"


def zone_ids(zone_type: str, count: int | None = None) -> list[str]:
    """Plausible zone ids: 7-digit districts, 5-digit municipalities with ``_AM`` aggregates."""
    import numpy as np

    count = count or ZONE_COUNTS[zone_type]
    rng = np.random.default_rng([7, ZONE_TYPES.index(zone_type)])
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        province = int(rng.integers(1, 53))
        municipality = int(rng.integers(1, 300))
        if zone_type == "distritos":
            zone = f"{province:02d}{municipality:03d}{int(rng.integers(1, 12)):02d}"
        else:
            zone = f"{province:02d}{municipality:03d}"
            if rng.random() < 0.15:
                zone += "_AM"
        if zone not in seen:
            seen.add(zone)
            ids.append(zone)
    return ids


def _weights(values: Iterable[float]):
    import numpy as np

    array = np.asarray(list(values), dtype=float)
    return array / array.sum()


def _batch(zone_type: str, day: date, rows: int, rng, zones):
    """One Arrow table of ``rows`` generated rows (all strings) and its integer milli-sums."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def pick(values, weights, n=rows):
        return pc.take(pa.array(values), pa.array(rng.choice(len(values), n, p=_weights(weights))))

    zone_count = len(zones) - len(FOREIGN_ZONES)
    # A few big zones draw most trips (Zipf-like), foreign zones rarely.
    popularity = 1.0 / np.arange(1, zone_count + 1) ** 0.8
    zone_weights = np.concatenate(
        [
            popularity / popularity.sum() * 0.99,
            np.full(len(FOREIGN_ZONES), 0.01 / len(FOREIGN_ZONES)),
        ]
    )
    origin = rng.choice(len(zones), rows, p=zone_weights)
    destination = rng.choice(len(zones), rows, p=zone_weights)
    same = rng.random(rows) < 0.25
    destination = np.where(same, origin, destination)
    zone_array = pa.array([*zones, "externo"])
    destination = np.where(rng.random(rows) < 0.02, len(zones), destination)
    distance = rng.choice(len(DISTANCES), rows, p=_weights(DISTANCE_WEIGHTS))
    low = np.take([d[0] for d in DISTANCE_KM], distance)
    high = np.take([d[1] for d in DISTANCE_KM], distance)
    trips_milli = np.maximum(1, np.rint(rng.lognormal(0.2, 1.1, rows) * 1000)).astype(np.int64)
    km = low + (high - low) * rng.random(rows) ** 1.5
    km_milli = np.rint(trips_milli * km).astype(np.int64)
    provinces = pa.array([z[:2] for z in zones])
    residence = pc.take(provinces, pa.array(origin))
    residence = pc.if_else(
        pa.array((rng.random(rows) < 0.05) | (origin >= zone_count)), "NA", residence
    )
    table = pa.table(
        {
            "fecha": pa.array(np.full(rows, f"{day:%Y%m%d}")),
            "periodo": pick([f"{h:02d}" for h in range(24)], HOUR_WEIGHTS),
            "origen": pc.take(zone_array, pa.array(origin)),
            "destino": pc.take(zone_array, pa.array(destination)),
            "distancia": pc.take(pa.array(DISTANCES), pa.array(distance)),
            "actividad_origen": pick(ACTIVITIES, ACTIVITY_WEIGHTS),
            "actividad_destino": pick(ACTIVITIES, ACTIVITY_WEIGHTS),
            "estudio_origen_posible": pick(("si", "no"), (0.3, 0.7)),
            "estudio_destino_posible": pick(("si", "no"), (0.3, 0.7)),
            "residencia": residence,
            "renta": pick(INCOMES, INCOME_WEIGHTS),
            "edad": pick(AGES, AGE_WEIGHTS),
            "sexo": pick(SEXES, SEX_WEIGHTS),
            "viajes": _decimal_text(trips_milli),
            "viajes_km": _decimal_text(km_milli),
        }
    )
    return table, int(trips_milli.sum()), int(km_milli.sum())


def _decimal_text(milli):
    """Integers in thousandths as ``12.345`` text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    whole = pc.cast(pa.array(milli // 1000), pa.string())
    fraction = pc.utf8_lpad(pc.cast(pa.array(milli % 1000), pa.string()), 3, "0")
    return pc.binary_join_element_wise(whole, fraction, ".")


def _bad_line(kind: str, day: date, zones: list[str]) -> str:
    good = [
        f"{day:%Y%m%d}",
        "08",
        zones[0],
        zones[1],
        "2-10",
        "casa",
        "trabajo_estudio",
        "no",
        "no",
        zones[0][:2],
        "10-15",
        "25-45",
        "mujer",
        "1.500",
        "6.250",
    ]
    if kind == "hour":
        good[1] = "24"
    elif kind == "flag":
        good[7] = "quizas"
    elif kind == "short":
        good = good[:-1]
    else:
        good[13] = "muchos"
    return "|".join(good)


def write_day(
    root: str | os.PathLike[str],
    zone_type: str,
    day: date,
    rows: int,
    seed: int = 0,
    *,
    bad_rows: int = 0,
    bom: bool = False,
    kind: str = "ok",
    zones: list[str] | None = None,
    compresslevel: int = 6,
) -> SampleFile:
    """Write one day's file under ``root`` in the published layout; return its truth.

    The bytes depend only on the arguments (gzip mtime 0), so a seed reproduces a file.
    """
    import gzip

    import numpy as np
    import pyarrow.csv as pacsv

    if kind not in ("ok", "corrupt_gzip", "wrong_header"):
        raise ValueError(f"kind: expected ok, corrupt_gzip or wrong_header, got {kind!r}")
    zones = [*(zones or zone_ids(zone_type)), *FOREIGN_ZONES]
    relpath = daily_relpath(zone_type, day)
    final = Path(root) / relpath
    final.parent.mkdir(parents=True, exist_ok=True)
    header = [c for c in COLUMNS if not (kind == "wrong_header" and c == "sexo")]
    # Bad lines sit at evenly spread positions (after this many good rows).
    bad_after = [int(rows * (i + 1) / (bad_rows + 1)) for i in range(bad_rows)]
    bad_lines = tuple(after + i + 2 for i, after in enumerate(bad_after))
    trips = km = 0
    options = pacsv.WriteOptions(include_header=False, delimiter="|", quoting_style="none")
    with publishing(final) as temporary:
        with (
            temporary.open("wb") as handle,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=handle, compresslevel=compresslevel, mtime=0
            ) as out,
        ):
            out.write(("\ufeff" if bom else "").encode() + ("|".join(header) + "\n").encode())
            written = 0
            batch_no = 0
            pending_bad = list(zip(bad_after, BAD_LINE_KINDS * (bad_rows + 1), strict=False))
            while written < rows or pending_bad:
                while pending_bad and pending_bad[0][0] <= written:
                    out.write((_bad_line(pending_bad.pop(0)[1], day, zones) + "\n").encode())
                if written >= rows:
                    continue
                limit = min(rows, written + BATCH_ROWS)
                if pending_bad:
                    limit = min(limit, max(pending_bad[0][0], written + 1))
                rng = np.random.default_rng(
                    [seed, ZONE_TYPES.index(zone_type), day.toordinal(), batch_no]
                )
                table, batch_trips, batch_km = _batch(zone_type, day, limit - written, rng, zones)
                if kind == "wrong_header":
                    table = table.drop_columns(["sexo"])
                pacsv.write_csv(table, out, options)
                trips, km = trips + batch_trips, km + batch_km
                written = limit
                batch_no += 1
        if kind == "corrupt_gzip":
            # A download cut short: the gzip stream stops mid-member.
            size = temporary.stat().st_size
            with temporary.open("r+b") as handle:
                handle.truncate(max(64, int(size * 0.6)))
    return SampleFile(
        zone_type, day, relpath, kind, rows, Decimal(trips) / 1000, Decimal(km) / 1000, bad_lines
    )


def write_samples(
    root: str | os.PathLike[str],
    start: date,
    days: int,
    zone_types: Iterable[str] = ZONE_TYPES,
    rows_per_day: int = 20_000,
    seed: int = 0,
    *,
    gaps: Iterable[date] = (),
    corrupt_gzip: Iterable[tuple[str, date]] = (),
    wrong_header: Iterable[tuple[str, date]] = (),
    bad_rows: dict[tuple[str, date], int] | None = None,
    bom_days: Iterable[date] = (),
    compresslevel: int = 6,
) -> list[SampleFile]:
    """Write ``days`` daily files per zone type from ``start``; rows vary by +-10 % per day."""
    import numpy as np

    skipped, corrupt, wrong, boms = set(gaps), set(corrupt_gzip), set(wrong_header), set(bom_days)
    bad_rows = bad_rows or {}
    files = []
    for zone_type in zone_types:
        zones = zone_ids(zone_type)
        for offset in range(days):
            day = start + timedelta(days=offset)
            if day in skipped:
                continue
            jitter = np.random.default_rng([seed, day.toordinal()]).uniform(0.9, 1.1)
            rows = max(1, int(rows_per_day * jitter))
            kind = (
                "corrupt_gzip"
                if (zone_type, day) in corrupt
                else "wrong_header"
                if (zone_type, day) in wrong
                else "ok"
            )
            files.append(
                write_day(
                    root,
                    zone_type,
                    day,
                    rows,
                    seed,
                    bad_rows=bad_rows.get((zone_type, day), 0),
                    bom=day in boms,
                    kind=kind,
                    zones=zones,
                    compresslevel=compresslevel,
                )
            )
    log.info("wrote %d sample files under %s", len(files), root)
    return files


def write_rss(
    root: str | os.PathLike[str], base_url: str, files: Iterable[SampleFile], name: str = "RSS.xml"
) -> Path:
    """Write the RSS 2.0 feed listing ``files`` with links under ``base_url``."""
    base = base_url.rstrip("/")
    items = []
    for sample in sorted(files, key=lambda f: (f.day, f.zone_type)):
        link = f"{base}/{sample.relpath}"
        released = datetime.combine(sample.day + timedelta(days=1), time(8), UTC)
        items.append(
            "  <item>\n"
            f"    <title>{escape(sample.name)}</title>\n"
            f"    <link>{escape(link)}</link>\n"
            f"    <guid>{escape(link)}</guid>\n"
            f"    <pubDate>{email.utils.format_datetime(released)}</pubDate>\n"
            "  </item>"
        )
    feed = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0">\n<channel>\n'
        "  <title>Estudio de movilidad MITMA: ficheros</title>\n"
        f"  <link>{escape(base)}/</link>\n"
        "  <description>Datos abiertos de movilidad (muestra generada)</description>\n"
        + "\n".join(items)
        + "\n</channel>\n</rss>\n"
    )
    path = Path(root) / name
    with publishing(path) as temporary:
        temporary.write_text(feed, encoding="utf-8")
    return path


def expected_totals(files: Iterable[SampleFile], zone_type: str) -> dict[date, tuple[int, Decimal]]:
    """{day: (rows, sum of viajes)} that a correct load of ``files`` leaves for a zone type."""
    return {f.day: (f.rows, f.viajes) for f in files if f.zone_type == zone_type and f.loadable}
