"""ISO LMP under bad input and machine faults: a published partition is never replaced by
fewer rows than the share allows, and an unwritable staging or output is one error."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flows.iso_lmp import dataset, samples
from flows.iso_lmp.base import Market

ISO = "NYISO"
DA = Market.DAY_AHEAD_HOURLY
NODES = 3
DAYS = [samples.ORDINARY, samples.ORDINARY + timedelta(days=1)]  # one UTC month


def _convert(raw: Path, out: Path, **kwargs) -> dict:
    files = sorted(str(p) for p in raw.glob("*.csv"))
    return dataset.convert_files(ISO, files, str(raw / dataset.STAGING), 64, str(out), **kwargs)


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, list[Path], int]:
    """Two days of one month published; (raw, out, raw files, published rows)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    paths = [samples.write_day(ISO, DA, day, raw, NODES) for day in DAYS]
    expected = sum(samples.truth(ISO, DA, day, NODES).num_rows for day in DAYS)
    result = _convert(raw, out)
    assert [p["rows"] for p in result["partitions"]] == [expected]
    return raw, out, paths, expected


def test_a_partition_is_not_replaced_by_half_its_rows(published):
    raw, out, paths, expected = published
    header = paths[1].read_text().splitlines()[0]
    paths[1].write_text(header + "\n")  # the second day re-published with no rows
    result = _convert(raw, out)
    [refused] = result["partitions"]
    assert refused["partition"] == dataset.partition_path(ISO, DA.value, "2024-01")
    assert f"{expected // 2:,} rows from {paths[0].name}" in refused["error"]
    assert f"would replace the {expected:,} published" in refused["error"]
    assert [m["rows"] for m in dataset.manifests(str(out))] == [expected]
    assert dataset.read_dataset(str(out)).num_rows == expected
    versions = list((out / refused["partition"]).glob("v-*"))
    assert len(versions) == 1, "the refused version was removed"


def test_a_smaller_partition_is_published_when_the_parameter_allows_it(published):
    raw, out, paths, expected = published
    header = paths[1].read_text().splitlines()[0]
    paths[1].write_text(header + "\n")
    result = _convert(raw, out, min_replace_share=0.5)
    assert [p["rows"] for p in result["partitions"]] == [expected // 2]
    assert dataset.read_dataset(str(out)).num_rows == expected // 2


def test_a_full_staging_disk_is_one_output_error_not_one_per_file(tmp_path, small_disk):
    from headroom import OutputUnavailable

    raw = small_disk("1m")  # the staging directory sits next to the raw files
    paths = [samples.write_day(ISO, DA, day, tmp_path / "site", 40) for day in DAYS]
    for path in paths:
        (raw / path.name).write_bytes(path.read_bytes())
    # Fill what is left, so that staging the first file already fails.
    filler = raw / "filler"
    with pytest.raises(OSError, match="No space left"), filler.open("wb") as handle:
        while True:
            handle.write(bytes(4096))
            handle.flush()
    with pytest.raises(OutputUnavailable, match="No space left on device") as caught:
        _convert(raw, tmp_path / "out")
    assert caught.value.path == str(raw / dataset.STAGING)
    assert not (tmp_path / "out").exists() or dataset.manifests(str(tmp_path / "out")) == []


def test_a_read_only_output_is_one_output_error(tmp_path, read_only_disk):
    from headroom import OutputUnavailable

    raw = tmp_path / "raw"
    for day in DAYS:
        samples.write_day(ISO, DA, day, raw, NODES)
    with pytest.raises(OutputUnavailable, match="Read-only file system") as caught:
        _convert(raw, read_only_disk / "dataset")
    assert caught.value.errno == 30
