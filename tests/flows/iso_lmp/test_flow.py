"""convert_iso_lmp end to end on a temporary Prefect server, with a mirror over real HTTP."""

from __future__ import annotations

import pytest

from flows.iso_lmp import dataset, samples
from flows.iso_lmp.flow import convert_iso_lmp
from headroom.prefect import ItemFailures
from tests.flows.iso_lmp.contract import rewrite, set_field

pytestmark = pytest.mark.usefixtures("prefect_harness")

ISOS = ["MISO", "ERCOT"]
DAYS = [samples.FALL_BACK, samples.ORDINARY]


def test_fetch_convert_a_bad_file_fails_alone_then_a_rerun_is_idempotent(tmp_path, http_server):
    site = tmp_path / "site"
    written = samples.write_samples(site, isos=ISOS, days=DAYS, nodes=3)
    bad = next(p for iso, _, day, p in written if iso == "MISO" and day == samples.ORDINARY)
    good_copy = bad.read_bytes()
    rewrite(
        bad, lambda ls: [set_field(line, 4, "abc") if i == 6 else line for i, line in enumerate(ls)]
    )
    raw, out = tmp_path / "raw", tmp_path / "out"
    params = dict(
        iso=["MISO", "ERCOT"],
        start=min(DAYS),
        end=max(DAYS),
        raw=str(raw),
        out=str(out),
        fetch=True,
        source=http_server(site),
        max_workers=2,
    )
    with pytest.raises(ItemFailures) as caught:
        convert_iso_lmp(**params)
    assert len(caught.value.failures) == 1
    name, reason = caught.value.failures[0]
    assert name == bad.name and "line 7" in reason and "'HE 2'" in reason
    expected_rows = sum(
        samples.truth(iso, market, day, 3).num_rows
        for iso, market, day, path in written
        if path != bad
    )
    assert dataset.read_dataset(str(out)).num_rows == expected_rows  # the others published

    ercot = [
        (m["partition"], m["checksum"]) for m in dataset.manifests(str(out)) if m["iso"] == "ERCOT"
    ]
    (raw / "miso" / bad.name).write_bytes(good_copy)  # the corrected file, published again
    summary = convert_iso_lmp(**params)
    assert summary["failed"] == 0 and summary["converted"] == 1
    assert summary["unchanged"] == len(written) - 1
    assert summary["rows_published"] == dataset.read_dataset(str(out)).num_rows
    assert (
        summary["rows_published"]
        == expected_rows
        + samples.truth("MISO", samples.Market.DAY_AHEAD_HOURLY, samples.ORDINARY, 3).num_rows
    )
    # The unchanged ISO was published again, to the same content: the re-run is idempotent.
    assert [
        (m["partition"], m["checksum"]) for m in dataset.manifests(str(out)) if m["iso"] == "ERCOT"
    ] == ercot


def test_bad_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(Exception, match="iso"):
        convert_iso_lmp(iso="NOPE", raw=str(tmp_path), out=str(tmp_path / "o"))
    with pytest.raises(Exception, match="end"):
        convert_iso_lmp(
            iso="all",
            start=samples.ORDINARY,
            end=samples.FALL_BACK,
            raw=str(tmp_path),
            out=str(tmp_path / "o"),
        )
    assert not (tmp_path / "o").exists()


def test_a_mirror_that_does_not_answer_fails_the_run_naming_host_and_parameter(tmp_path):
    from deployments.ports import free_port

    port = free_port()  # nothing listens there
    state = convert_iso_lmp(
        iso=["MISO", "ERCOT"],
        start=samples.ORDINARY,
        end=samples.ORDINARY,
        raw=str(tmp_path / "raw"),
        out=str(tmp_path / "out"),
        fetch=True,
        source=f"http://127.0.0.1:{port}",
        return_state=True,
    )
    assert state.is_failed()
    assert f"parameter source: cannot reach 127.0.0.1:{port} (" in state.message, state.message
    assert not list((tmp_path / "out").rglob("*.parquet"))  # nothing published
