"""Storage keeps every relative path inside its root and publishes atomically."""

from __future__ import annotations

import pytest

from headroom import BadInput
from headroom.storage import open_storage


def test_paths_inside_the_root_resolve_under_it(tmp_path):
    storage = open_storage(tmp_path)
    assert storage.path("a", "b.parquet") == f"{tmp_path}/a/b.parquet"
    assert storage.path("a/./c/../b.parquet").startswith(str(tmp_path))


@pytest.mark.parametrize("relative", ["..", "../x", "/etc/passwd", "a/../../x"])
def test_a_path_leaving_the_root_is_refused_naming_it(tmp_path, relative):
    storage = open_storage(tmp_path / "root")
    with pytest.raises(BadInput, match="is not a path inside") as refused:
        storage.path(relative)
    assert relative in str(refused.value)
    with pytest.raises(BadInput):
        storage.write_json(relative, {"x": 1})
    assert not (tmp_path / "x").exists()


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path):
    storage = open_storage(tmp_path)
    storage.write_json("doc.json", {"rows": 3})
    assert storage.read_json("doc.json") == {"rows": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]


def test_temporaries_of_one_file_are_removed_and_no_others(tmp_path):
    from headroom.storage import TMP_MARK, open_storage

    folder = tmp_path / "transactions"
    folder.mkdir()
    mine = folder / f"{TMP_MARK}abc-part-00001.parquet"
    other = folder / f"{TMP_MARK}def-part-00002.parquet"
    final = folder / "part-00001.parquet"
    for path in (mine, other, final):
        path.write_bytes(b"x")
    removed = open_storage(tmp_path).remove_temporaries(of="transactions/part-00001.parquet")
    assert [p.rsplit("/", 1)[-1] for p in removed] == [mine.name]
    assert not mine.exists() and other.exists() and final.exists()
