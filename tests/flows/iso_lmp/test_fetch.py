"""Downloads from a mirror served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta

import pytest

from flows.iso_lmp import fetch, samples
from flows.iso_lmp.base import Market
from flows.iso_lmp.formats.registry import iso_format


class KeyRecorder(http.server.SimpleHTTPRequestHandler):
    """Serves files and remembers the PJM key headers it was sent."""

    keys: list[str] = []

    def do_GET(self):  # noqa: N802
        KeyRecorder.keys.append(self.headers.get(fetch.PJM_KEY_HEADER, ""))
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002
        pass


def test_fetch_downloads_skips_present_and_reports_missing(tmp_path, http_server):
    site = tmp_path / "site"
    samples.write_samples(site, isos=["NYISO", "ERCOT"], days=[samples.ORDINARY], nodes=2)
    base = http_server(site)
    raw = tmp_path / "raw"
    day, next_day = samples.ORDINARY, samples.ORDINARY + timedelta(days=1)
    report = fetch.fetch_range(
        "NYISO", None, day.isoformat(), next_day.isoformat(), str(raw), source=base
    )
    name = iso_format("NYISO").file_name(Market.DAY_AHEAD_HOURLY, day)
    assert report["downloaded"] == [name]
    assert report["missing"] == [iso_format("NYISO").file_name(Market.DAY_AHEAD_HOURLY, next_day)]
    assert (raw / "nyiso" / name).read_bytes() == (site / "nyiso" / name).read_bytes()
    again = fetch.fetch_range(
        "NYISO", None, day.isoformat(), day.isoformat(), str(raw), source=base
    )
    assert (again["downloaded"], again["skipped"]) == ([], [name])
    ercot = fetch.fetch_range(
        "ERCOT", None, day.isoformat(), day.isoformat(), str(raw), source=base
    )
    assert len(ercot["downloaded"]) == 2 and not ercot["failed"]
    assert not list(raw.rglob(".tmp-*"))


def test_pjm_key_goes_in_a_header(tmp_path):
    import functools

    site = tmp_path / "site"
    samples.write_samples(
        site, isos=["PJM"], days=[samples.ORDINARY], nodes=2, markets=[Market.DAY_AHEAD_HOURLY]
    )
    handler = functools.partial(KeyRecorder, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        report = fetch.fetch_range(
            "PJM",
            ["DAY_AHEAD_HOURLY"],
            samples.ORDINARY.isoformat(),
            samples.ORDINARY.isoformat(),
            str(tmp_path / "raw"),
            source=base,
            api_key="test-key-123",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert report["downloaded"] == ["da_hrl_lmps_20240115.csv"]
    assert KeyRecorder.keys == ["test-key-123"]


def test_public_endpoints_cover_the_local_day():
    url = fetch.file_url("CAISO", Market.DAY_AHEAD_HOURLY, samples.FALL_BACK)
    # Pacific midnight is 07:00 UTC in daylight time; the day ends at 08:00 UTC (25 hours).
    assert "startdatetime=20231105T07:00-0000" in url
    assert "enddatetime=20231106T08:00-0000" in url
    assert fetch.file_url("ERCOT", Market.DAY_AHEAD_HOURLY, samples.FALL_BACK) is None
    assert fetch.file_url("MISO", Market.DAY_AHEAD_HOURLY, samples.FALL_BACK).endswith(
        "/20231105_da_expost_lmp.csv"
    )


def test_a_mirror_that_does_not_answer_names_host_and_parameter(tmp_path):
    from deployments.ports import free_port

    port = free_port()  # nothing listens there
    source = f"http://127.0.0.1:{port}"
    day = samples.ORDINARY.isoformat()
    with pytest.raises(ConnectionError) as caught:
        fetch.fetch_range("MISO", None, day, day, str(tmp_path / "raw"), source=source)
    message = str(caught.value)
    assert message.startswith(f"parameter source: cannot reach 127.0.0.1:{port} ("), message
    assert "refused" in message.lower(), message
    assert not list((tmp_path / "raw").rglob("*.*"))  # nothing half-written
