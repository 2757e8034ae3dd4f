"""Download the raw price files of a date range into ``raw/<iso>/``, skipping what is there.

Each ISO's public endpoint is a URL template over the published file name and the day; a
mirror (``source``: ``<source>/<iso>/<file name>``) replaces them all, for tests and for
sites that cache the files. PJM's API needs a subscription key: it is a parameter (the flow
reads it from a Secret block or the environment), sent as a header, never stored here.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flows.iso_lmp.base import Market, local_day_hours
from flows.iso_lmp.formats.registry import iso_format
from headroom.storage import publishing

log = logging.getLogger(__name__)

DA, RT_H = Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_HOURLY
RT_15, RT_5 = Market.REAL_TIME_15_MIN, Market.REAL_TIME_5_MIN
_PJM = (
    "https://api.pjm.com/api/v1/{feed}?download=true&format=csv&rowCount=1000000&startRow=1"
    "&datetime_beginning_ept={day:%m/%d/%Y} 00:00to{day:%m/%d/%Y} 23:59"
)
_CAISO = (
    "http://oasis.caiso.com/oasisapi/SingleZip?resultformat=6&version=12&grp_type=ALL_APNODES"
    "&queryname={query}&market_run_id={run}&startdatetime={start_gmt}&enddatetime={end_gmt}"
)
_SPP = "https://portal.spp.org/file-browser-api/download/{folder}?path=/{day:%Y}/{day:%m}/By_Day/{name}"
ENDPOINTS: dict[str, dict[Market, str]] = {
    "MISO": {m: "https://docs.misoenergy.org/marketreports/{name}" for m in (DA, RT_H)},
    "PJM": {DA: _PJM.replace("{feed}", "da_hrl_lmps"), RT_H: _PJM.replace("{feed}", "rt_hrl_lmps")},
    "CAISO": {m: _CAISO for m in (DA, RT_15, RT_5)},
    "NYISO": {DA: "http://mis.nyiso.com/public/csv/damlbmp/{name}"},
    "SPP": {
        DA: _SPP.replace("{folder}", "da-lmp-by-location"),
        RT_5: _SPP.replace("{folder}", "rtbm-lmp-by-location"),
    },
    "ISONE": {
        DA: "https://www.iso-ne.com/static-transform/csv/histRpts/da-lmp/{name}",
        RT_H: "https://www.iso-ne.com/static-transform/csv/histRpts/rt-lmp/{name}",
    },
    # ERCOT's MIS serves documents by an id that a listing gives, not by a name: use a mirror.
    "ERCOT": {},
}
PJM_KEY_HEADER = "Ocp-Apim-Subscription-Key"
BLOCK_BYTES = 1 << 20


def file_url(iso: str, market: Market, day: date, source: str | None = None) -> str | None:
    """Where a day's file is published (or mirrored under ``source``); None if unknown."""
    fmt = iso_format(iso)
    name = fmt.file_name(market, day)
    if source:
        return f"{source.rstrip('/')}/{fmt.iso_id.lower()}/{name}"
    template = ENDPOINTS.get(fmt.iso_id, {}).get(market)
    if template is None:
        return None
    midnight_us, hours = local_day_hours(day, fmt.zone)
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=midnight_us)
    end = start + timedelta(hours=hours)
    query, run = getattr(fmt, "queries", {}).get(market, ("", ""))
    return template.format(
        name=name,
        day=day,
        query=query,
        run=run,
        start_gmt=f"{start:%Y%m%dT%H:%M}-0000",
        end_gmt=f"{end:%Y%m%dT%H:%M}-0000",
    )


def download(url: str, destination: Path, headers: dict[str, str], timeout_s: float = 60) -> int:
    """Stream ``url`` to ``destination`` under a temporary name; bytes written."""
    request = urllib.request.Request(url, headers=headers)
    written = 0
    with publishing(destination) as temporary:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            with open(temporary, "wb") as target:
                while block := response.read(BLOCK_BYTES):
                    target.write(block)
                    written += len(block)
    return written


def unreachable(url: str, exc: BaseException, iso: str, source: str | None) -> ConnectionError:
    """The error of a host that does not answer, naming the host and the parameter."""
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
    reason = getattr(exc, "reason", None) or exc
    if source:
        return ConnectionError(f"parameter source: cannot reach {host} ({reason})")
    return ConnectionError(
        f"parameter source: not given, and {iso}'s public endpoint {host} cannot be reached "
        f"({reason}); a mirror can be given as source"
    )


def fetch_range(
    iso: str,
    markets: list[str] | None,
    start: str,
    end: str,
    raw: str,
    source: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Download one ISO's files for ``start``..``end``; present files are skipped, files
    the endpoint does not have (404) are reported missing."""
    fmt = iso_format(iso)
    wanted = [Market(m) for m in markets] if markets else list(fmt.markets)
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    headers = {"User-Agent": "headroom-iso-lmp/0.1"}
    if fmt.iso_id == "PJM" and api_key:
        headers[PJM_KEY_HEADER] = api_key
    report: dict[str, Any] = {"iso": fmt.iso_id, "downloaded": [], "skipped": [], "missing": []}
    report["failed"], report["bytes"] = [], 0
    for market in (m for m in wanted if m in fmt.markets):
        day = first
        while day <= last:
            name = fmt.file_name(market, day)
            destination = Path(raw) / fmt.iso_id.lower() / name
            url = file_url(fmt.iso_id, market, day, source)
            day += timedelta(days=1)
            if destination.exists():
                report["skipped"].append(name)
                continue
            if url is None:
                report["missing"].append(f"{name} (no public endpoint: use a mirror)")
                continue
            try:
                report["bytes"] += download(url, destination, headers)
                report["downloaded"].append(name)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    report["missing"].append(name)
                else:
                    report["failed"].append(f"{name}: HTTP {exc.code}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                # The host does not answer: every other file of it would fail the same way.
                raise unreachable(url, exc, fmt.iso_id, source) from None
    log.info(
        "%s: %d downloaded, %d present, %d missing, %d failed",
        fmt.iso_id,
        len(report["downloaded"]),
        len(report["skipped"]),
        len(report["missing"]),
        len(report["failed"]),
    )
    return report
