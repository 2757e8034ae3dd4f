"""Each ISO's reader against the contract, plus its own DST and zip failure cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.iso_lmp import samples
from flows.iso_lmp.base import IsoParseError, Market
from tests.flows.iso_lmp.contract import IsoContract, rewrite, set_field


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class TestMiso(IsoContract):
    iso = "MISO"
    header_line, header_column = 4, "HE 5"
    first_data_line, price_field, price_column = 5, 3, "HE 1"
    record_lines = 3
    derived_energy = True


class TestPjm(IsoContract):
    iso = "PJM"
    header_column = "total_lmp_da"
    price_field, price_column = 9, "total_lmp_da"

    def test_later_version_wins_within_a_file(self, tmp_path):
        from flows.iso_lmp import dataset

        path = samples.write_day("PJM", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 2)
        # A second version of the first row, with another price: not a duplicate, a revision.
        rewrite(
            path,
            lambda ls: ls + [set_field(set_field(ls[1], 9, "99.99"), 13, "2")],
        )
        staging, out = tmp_path / "staging", tmp_path / "out"
        result = dataset.convert_file("PJM", "DAY_AHEAD_HOURLY", str(path), str(staging), 10)
        dataset.publish_partition(
            "PJM", "DAY_AHEAD_HOURLY", result["months"][0], str(staging), str(out), 10
        )
        table = dataset.read_dataset(str(out))
        assert table.num_rows == 48
        assert 99.99 in table.column("lmp").to_pylist()


class TestCaiso(IsoContract):
    iso = "CAISO"
    header_column = "NODE_ID_XML"
    price_field, price_column = 14, "MW"

    def test_truncated_zip(self, tmp_path):
        path = samples.write_day("CAISO", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 4)
        _truncate(path)
        assert "truncated or corrupt zip" in str(self._fails(path))


class TestNyiso(IsoContract):
    iso = "NYISO"
    header_column = "PTID"
    price_field, price_column = 3, "LBMP ($/MWHr)"
    derived_energy = True

    def test_nonexistent_spring_forward_time(self, tmp_path):
        path = samples.write_day(
            "NYISO", Market.DAY_AHEAD_HOURLY, samples.SPRING_FORWARD, tmp_path, 2
        )
        rewrite(path, lambda ls: ls[:2] + [set_field(ls[1], 0, "03/10/2024 02:00")] + ls[2:])
        error = self._fails(path)
        assert (error.line, error.column) == (3, "Time Stamp")
        assert "does not exist" in str(error)


class TestSpp(IsoContract):
    iso = "SPP"
    header_column = "Pnode"
    price_field, price_column = 4, "LMP"

    def test_newer_files_with_baa_column(self, tmp_path):
        path = samples.write_day("SPP", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 2)
        rewrite(
            path, lambda ls: [line + (",BAA" if i == 0 else ",SWPP") for i, line in enumerate(ls)]
        )
        rows = sum(t.num_rows for t in self.fmt.read(path, Market.DAY_AHEAD_HOURLY, 100))
        assert rows == 48


class TestIsone(IsoContract):
    iso = "ISONE"
    header_line, header_column = 3, "Energy Component"
    first_data_line, price_field, price_column = 5, 6, "Locational Marginal Price"

    def test_repeated_hour_on_an_ordinary_day(self, tmp_path):
        path = samples.write_day("ISONE", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 2)
        rewrite(
            path,
            lambda ls: [set_field(line, 2, "02X") if i == 7 else line for i, line in enumerate(ls)],
        )
        error = self._fails(path)
        assert (error.line, error.column) == (8, "Hour Ending")


class TestErcot(IsoContract):
    iso = "ERCOT"
    header_column = "SettlementPoint"
    price_field, price_column = 3, "SettlementPointPrice"

    def test_truncated_zip(self, tmp_path):
        path = samples.write_day("ERCOT", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 4)
        _truncate(path)
        assert "truncated or corrupt zip" in str(self._fails(path))

    def test_dst_flag_on_an_ordinary_day(self, tmp_path):
        path = samples.write_day("ERCOT", Market.DAY_AHEAD_HOURLY, samples.ORDINARY, tmp_path, 2)
        rewrite(
            path,
            lambda ls: [set_field(line, 4, "Y") if i == 3 else line for i, line in enumerate(ls)],
        )
        error = self._fails(path)
        assert (error.line, error.column) == (4, "HourEnding")
        assert "repeated-hour flag" in str(error)


def test_parse_error_survives_pickling():
    import pickle

    error = IsoParseError("/x/f.csv", "bad", 7, "LMP")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.line, again.column, str(again)) == (error.path, 7, "LMP", str(error))
    with pytest.raises(ValueError):
        raise again
