"""Which daily MITMA OD files a date range has: from the RSS feed, a URL pattern or a directory.

The published layout (FORMATS.md, MITMA mobility study v2): ``YYYYMMDD_Viajes_<zone>.csv.gz``
under ``estudios_basicos/por-<zone>/viajes/ficheros-diarios/YYYY-MM/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from flows.mitma_od.download import TransientDownloadError, open_url, unreachable
from flows.mitma_od.schema import check_zone_type as _check_zone_type
from headroom.errors import BadInput

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "https://movilidad-opendata.mitma.es/RSS.xml"


FILE_NAME = re.compile(r"^(?P<day>\d{8})_Viajes_(?P<zone>distritos|municipios|GAU)\.csv\.gz$")


def daily_name(zone_type: str, day: date) -> str:
    """``YYYYMMDD_Viajes_<zone_type>.csv.gz``."""
    _check_zone_type(zone_type)
    return f"{day:%Y%m%d}_Viajes_{zone_type}.csv.gz"


def daily_relpath(zone_type: str, day: date) -> str:
    """The file's path under the open-data root, as published."""
    return (
        f"estudios_basicos/por-{zone_type}/viajes/ficheros-diarios/{day:%Y-%m}/"
        f"{daily_name(zone_type, day)}"
    )


def day_of_name(name: str) -> tuple[date, str] | None:
    """(day, zone type) of a published daily file name, or None for any other file."""
    match = FILE_NAME.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match["day"], "%Y%m%d").date(), match["zone"]
    except ValueError:
        return None


@dataclass(frozen=True)
class DailyFile:
    """One published daily file: where to get it and which day and zone type it holds."""

    day: date
    zone_type: str
    name: str
    location: str
    """An http(s) URL, or a local path for a directory mirror."""

    @property
    def is_local(self) -> bool:
        return urlparse(self.location).scheme not in ("http", "https")

    def as_item(self) -> dict[str, str]:
        """JSON-able form for task parameters."""
        return {
            "day": self.day.isoformat(),
            "zone_type": self.zone_type,
            "name": self.name,
            "location": self.location,
        }


@dataclass
class Discovery:
    """The files found for a range of days, the days without one, and how they were found."""

    files: list[DailyFile] = field(default_factory=list)
    gaps: list[date] = field(default_factory=list)
    method: str = ""


def discover(
    source: str, zone_type: str, days: Iterable[date], timeout_s: float = 30.0
) -> Discovery:
    """List the daily files of ``days`` from an RSS feed, the URL pattern or a local mirror."""
    _check_zone_type(zone_type)
    wanted = sorted(set(days))
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        if parsed.path.lower().endswith(".xml"):
            with open_url(source, timeout_s) as response:
                found = files_from_rss(response, zone_type, base_url=source)
            method = f"RSS feed {source}"
        else:
            found = _files_by_pattern(source, zone_type, wanted, timeout_s)
            method = f"URL pattern under {source}"
    else:
        root = Path(parsed.path if parsed.scheme == "file" else source)
        if root.is_file() and root.suffix.lower() == ".xml":
            with root.open("rb") as handle:
                found = files_from_rss(handle, zone_type, base_url=root.parent.as_uri() + "/")
            method = f"RSS file {root}"
        elif root.is_dir():
            found = _files_in_directory(root, zone_type, wanted)
            method = f"directory {root}"
        else:
            raise BadInput(f"source: {source!r} is neither a URL nor an existing directory")
    by_day = {f.day: f for f in found if f.zone_type == zone_type and f.day in set(wanted)}
    result = Discovery(
        [by_day[d] for d in wanted if d in by_day], [d for d in wanted if d not in by_day], method
    )
    for gap in result.gaps:
        log.warning("no %s file for %s (%s): a gap, not a failure", zone_type, gap, method)
    return result


def files_from_rss(
    stream: Any, zone_type: str | None = None, base_url: str = ""
) -> list[DailyFile]:
    """Daily files listed in an RSS 2.0 feed, read incrementally (the real feed is large)."""
    import xml.etree.ElementTree as ET

    found: list[DailyFile] = []
    try:
        for _, element in ET.iterparse(stream, events=("end",)):
            if _local_name(element.tag) != "item":
                continue
            fields = {_local_name(child.tag): (child.text or "").strip() for child in element}
            element.clear()
            link = fields.get("link") or fields.get("guid") or ""
            if not link:
                continue
            link = urljoin(base_url, link)
            name = Path(urlparse(link).path).name
            parsed = day_of_name(name)
            if parsed is None or (zone_type is not None and parsed[1] != zone_type):
                continue
            location = link
            if urlparse(link).scheme == "file":
                location = urlparse(link).path
            found.append(DailyFile(parsed[0], parsed[1], name, location))
    except ET.ParseError as exc:
        raise BadInput(f"source: the RSS feed is not valid XML ({exc})") from None
    return found


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _files_by_pattern(
    base_url: str, zone_type: str, days: list[date], timeout_s: float
) -> list[DailyFile]:
    import urllib.error
    import urllib.request

    base = base_url if base_url.endswith("/") else base_url + "/"
    found = []
    for day in days:
        url = urljoin(base, daily_relpath(zone_type, day))
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                continue
            raise TransientDownloadError(f"HEAD {url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise unreachable(url, exc) from None
        found.append(DailyFile(day, zone_type, daily_name(zone_type, day), url))
    return found


def _files_in_directory(root: Path, zone_type: str, days: list[date]) -> list[DailyFile]:
    found = []
    for day in days:
        # The published layout, or the files side by side in one folder.
        for candidate in (root / daily_relpath(zone_type, day), root / daily_name(zone_type, day)):
            if candidate.is_file():
                found.append(DailyFile(day, zone_type, candidate.name, str(candidate)))
                break
    return found
