"""The contract every ISO reader meets; each ISO's test class subclasses :class:`IsoContract`.

Sample files (an ordinary day, a fall-back day, a spring-forward day, every market) are
converted and published once per class; the dataset is then checked against the sample
generator's truth, the DST rules, and bad inputs made from the same files.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.iso_lmp import dataset, samples
from flows.iso_lmp.base import CANONICAL_COLUMNS, IsoParseError, Market, canonical_schema
from flows.iso_lmp.formats.registry import iso_format

NODES = 4
CHUNK = 40  # rows per chunk: small, so every reader crosses chunk boundaries


def convert_all(raw: Path, out: Path, iso: str) -> list[dict]:
    """Convert every raw file of ``iso`` and publish its months; per-file results."""
    files = dataset.discover(raw, [iso], None, min(samples.SAMPLE_DAYS), max(samples.SAMPLE_DAYS))
    staging = str(dataset.staging_root_for(raw))
    results, months = [], set()
    for raw_file in files:
        outcome = dataset.convert_files(iso, [str(raw_file.path)], staging, CHUNK)
        for result in outcome["files"]:
            results.append(result)
            months |= {(raw_file.market.value, m) for m in result.get("months", [])}
    dataset.publish_partitions(iso, sorted(months), staging, str(out), CHUNK)
    return results


def rewrite(path: Path, edit) -> None:
    """Apply ``edit(lines) -> lines`` to a raw file's text (inside its zip if zipped)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            member = archive.namelist()[0]
            text = archive.read(member).decode()
        lines = edit(text.splitlines())
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member, "\n".join(lines) + "\n")
    else:
        lines = edit(path.read_text().splitlines())
        path.write_text("\n".join(lines) + "\n")


def set_field(line: str, index: int, value: str) -> str:
    """A CSV line with one field replaced, quoted as the line was."""
    fields = next(csv.reader([line]))
    fields[index] = value
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if line.startswith('"') else csv.QUOTE_MINIMAL
    csv.writer(buffer, quoting=quoting, lineterminator="").writerow(fields)
    return buffer.getvalue()


class IsoContract:
    """Subclass with the ISO id and where its files keep header, data and a price."""

    iso: str = ""
    header_line = 0
    """0-based line of the header."""
    header_column = ""
    """A column of the header to rename (an unknown header)."""
    first_data_line = 1
    """0-based line of the first data row."""
    price_field = 0
    """Field index of a price in a data row, and its column name."""
    price_column = ""
    record_lines = 1
    """Lines that make one record (MISO: LMP, MCC, MLC rows of a node)."""
    derived_energy = False
    """Whether energy is derived from lmp - congestion - loss (not published)."""

    @pytest.fixture(scope="class")
    @classmethod
    def site(cls, tmp_path_factory):
        root = tmp_path_factory.mktemp(f"iso-{cls.iso.lower()}")
        written = samples.write_samples(root / "raw", isos=[cls.iso], nodes=NODES)
        results = convert_all(root / "raw", root / "out", cls.iso)
        return root, written, results

    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, site):
        root, _, _ = site
        return dataset.read_dataset(str(root / "out"))

    @property
    def fmt(self):
        return iso_format(self.iso)

    def _sample(self, site, tmp_path, day=samples.ORDINARY, market=None) -> Path:
        """A fresh copy of one sample file (the first market's) to spoil."""
        market = market or self.fmt.markets[0]
        return samples.write_day(self.iso, market, day, tmp_path, NODES)

    # --- the dataset -----------------------------------------------------------------------

    def test_every_sample_file_converts(self, site):
        _, written, results = site
        assert [r.get("error") for r in results] == [None] * len(written)

    def test_schema_is_canonical(self, table):
        assert table.schema == canonical_schema()
        assert tuple(table.column_names) == CANONICAL_COLUMNS
        assert set(table.column("iso").to_pylist()) == {self.fmt.iso_id}

    def test_rows_and_checksums_match_the_generator(self, site, table):
        _, written, _ = site
        keys = ["market", "location", "interval_start_utc"]
        expected = pa.concat_tables(
            [samples.truth(iso, market, day, NODES) for iso, market, day, _ in written]
        ).sort_by([(k, "ascending") for k in keys])
        got = table.select(expected.column_names).sort_by([(k, "ascending") for k in keys])
        assert got.num_rows == expected.num_rows
        for name in keys + ["location_type"]:
            assert got.column(name).equals(expected.column(name)), name
        for name in ("lmp", "energy", "congestion", "loss"):
            a, b = got.column(name), expected.column(name)
            assert a.null_count == b.null_count, name
            if b.null_count < len(b):
                assert pc.max(pc.abs(pc.subtract(a, b))).as_py() < 1e-9, name
        for market in {m for _, m, _, _ in written}:  # row counts and lmp checksum per market
            mine = pc.equal(got.column("market"), market.value)
            theirs = pc.equal(expected.column("market"), market.value)
            assert pc.sum(mine).as_py() == pc.sum(theirs).as_py()
            total = pc.sum(got.filter(mine).column("lmp")).as_py()
            assert total == pytest.approx(pc.sum(expected.filter(theirs).column("lmp")).as_py())

    def test_intervals_and_local_time_agree(self, table):
        start = table.column("interval_start_utc").cast(pa.int64()).to_numpy()
        end = table.column("interval_end_utc").cast(pa.int64()).to_numpy()
        minutes = [Market(m).minutes for m in table.column("market").to_pylist()]
        assert ((end - start) // 60_000_000 == minutes).all()
        local = table.column("interval_start_local").cast(pa.int64()).to_numpy()
        offset = table.column("utc_offset_minutes").to_numpy().astype("int64")
        assert (local - start == offset * 60_000_000).all()

    def test_utc_strictly_increasing_per_market_and_location(self, table):
        starts: dict[tuple[str, str], list[int]] = {}
        for market, location, start in zip(
            table.column("market").to_pylist(),
            table.column("location").to_pylist(),
            table.column("interval_start_utc").cast(pa.int64()).to_pylist(),
            strict=True,
        ):
            starts.setdefault((market, location), []).append(start)
        # Every location has a day of intervals to order, so the check below compares some.
        assert starts and all(len(times) > 1 for times in starts.values())
        for key, times in starts.items():
            ordered = sorted(times)
            assert all(b > a for a, b in zip(ordered, ordered[1:], strict=False)), key

    def test_dst_days_have_25_and_23_hours(self, table):
        expected = {samples.FALL_BACK: 25, samples.SPRING_FORWARD: 23, samples.ORDINARY: 24}
        if self.fmt.iso_id == "MISO":  # fixed EST: every day has 24 hours
            expected = dict.fromkeys(expected, 24)
        hours: Counter = Counter()
        seen = set()
        for market, location, start, local in zip(
            table.column("market").to_pylist(),
            table.column("location").to_pylist(),
            table.column("interval_start_utc").to_pylist(),
            table.column("interval_start_local").to_pylist(),
            strict=True,
        ):
            hour = start.replace(minute=0)  # distinct hourly intervals, any market length
            if (market, location, hour) not in seen:
                seen.add((market, location, hour))
                hours[(market, location, local.date())] += 1
        for (_, _, day), count in hours.items():
            assert count == expected[day], (day, count)
        assert len(hours) == len(expected) * NODES * len(self.fmt.markets)

    def test_component_identity(self, table):
        lmp, energy = table.column("lmp"), table.column("energy")
        parts = pc.add(pc.add(energy, table.column("congestion")), table.column("loss"))
        if self.fmt.iso_id == "ERCOT":
            assert energy.null_count == len(energy)  # settlement point prices: no components
            return
        assert pc.max(pc.abs(pc.subtract(lmp, parts))).as_py() < 1e-9

    def test_rerun_is_idempotent(self, site, tmp_path):
        root, _, _ = site
        before = dataset.manifests(str(root / "out"))
        results = convert_all(root / "raw", root / "out", self.iso)
        assert all(r["skipped"] for r in results)  # unchanged raw files are not parsed again
        staging = dataset.staging_root_for(root / "raw")
        for directory in (staging / self.fmt.iso_id).glob("*/*"):
            (directory / dataset.MARKER).unlink()  # force a full re-conversion
        results = convert_all(root / "raw", root / "out", self.iso)
        assert not any(r["skipped"] for r in results)
        after = dataset.manifests(str(root / "out"))
        assert [(m["partition"], m["rows"], m["checksum"]) for m in after] == [
            (m["partition"], m["rows"], m["checksum"]) for m in before
        ]
        assert all(a["version"] != b["version"] for a, b in zip(after, before, strict=True))
        assert len(dataset.current_files(str(root / "out"))) == len(after)

    # --- bad input -------------------------------------------------------------------------

    def _fails(self, path: Path, market=None) -> IsoParseError:
        market = market or self.fmt.markets[0]
        with pytest.raises(IsoParseError) as caught:
            for _ in self.fmt.read(path, market, CHUNK):
                pass
        assert path.name in str(caught.value)
        return caught.value

    def test_unknown_header_names_the_column(self, site, tmp_path):
        path = self._sample(site, tmp_path)
        rewrite(
            path,
            lambda ls: [
                line.replace(self.header_column, "Mystery Price", 1)
                if i == self.header_line
                else line
                for i, line in enumerate(ls)
            ],
        )
        error = self._fails(path)
        assert (error.line, error.column) == (self.header_line + 1, "Mystery Price")

    def test_non_numeric_price_names_line_and_column(self, site, tmp_path):
        path = self._sample(site, tmp_path)
        target = self.first_data_line + self.record_lines  # the second record
        rewrite(
            path,
            lambda ls: [
                set_field(line, self.price_field, "12.3x") if i == target else line
                for i, line in enumerate(ls)
            ],
        )
        error = self._fails(path)
        assert (error.line, error.column) == (target + 1, self.price_column)
        assert "12.3x" in str(error)

    def test_duplicate_interval_that_is_no_dst_repeat_fails(self, site, tmp_path):
        path = self._sample(site, tmp_path)
        first = self.first_data_line
        block = slice(first, first + self.record_lines)
        rewrite(path, lambda ls: ls[: block.stop] + ls[block] + ls[block.stop :])
        with pytest.raises(IsoParseError) as caught:  # found by the staging step
            dataset.convert_file(
                self.iso, self.fmt.markets[0].value, str(path), str(tmp_path / "staging"), CHUNK
            )
        error = caught.value
        assert "duplicate interval" in str(error)
        assert error.line == first + self.record_lines + 1
        assert error.column == self.fmt.time_column

    def test_bad_file_fails_alone_and_leaves_nothing(self, site, tmp_path):
        bad = self._sample(site, tmp_path / "bad")
        good = self._sample(site, tmp_path / "good", day=samples.ORDINARY + timedelta(days=1))
        rewrite(
            bad,
            lambda ls: [
                set_field(ls[self.first_data_line], self.price_field, "n/a")
                if i == self.first_data_line
                else line
                for i, line in enumerate(ls)
            ],
        )
        staging = tmp_path / "staging"
        market = self.fmt.markets[0].value
        result = dataset.convert_files(self.iso, [str(bad), str(good)], str(staging), 50)
        bad_result, good_result = result["files"]
        assert "non-numeric price" in bad_result["error"]
        assert good_result["rows"] > 0
        staged = sorted(p.name for p in (staging / self.fmt.iso_id / market).iterdir())
        assert staged == [good.name]  # no temporary or half-written directory of the bad file
