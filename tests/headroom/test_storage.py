"""Storage keeps every relative path inside its root and publishes atomically."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from headroom import BadInput
from headroom.storage import TMP_MARK, open_storage, publishing

ROOT = Path(__file__).resolve().parents[2]


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


def test_publishing_a_file_replaces_it_whole_or_not_at_all(tmp_path):
    final = tmp_path / "deep" / "out.csv"
    with publishing(final) as temporary:
        assert temporary.parent == final.parent and temporary.name.startswith(TMP_MARK)
        temporary.write_text("old")
    with pytest.raises(RuntimeError), publishing(final) as temporary:
        temporary.write_text("half")
        raise RuntimeError("the writer failed")
    assert final.read_text() == "old"
    with publishing(final) as temporary:
        temporary.write_text("new")
    assert final.read_text() == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == ["out.csv"]


def test_publishing_a_directory_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "features"
    for version in ("1", "2"):
        with publishing(final, directory=True) as building:
            (building / "part-0.parquet").write_text(version)
            (building / f"only-in-{version}").touch()
    assert sorted(p.name for p in final.iterdir()) == ["only-in-2", "part-0.parquet"]
    assert (final / "part-0.parquet").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["features"]  # the old one is gone


def test_without_replace_the_first_writer_wins(tmp_path):
    final = tmp_path / "world-abc"
    for writer in ("first", "second"):
        with publishing(final, directory=True, replace=False) as building:
            (building / "who").write_text(writer)
    assert (final / "who").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["world-abc"]


def test_a_killed_writer_leaves_the_old_file_and_a_leftover_naming_its_pid(tmp_path):
    final = tmp_path / "out.bin"
    final.write_text("old")
    code = (
        "import sys, time; from headroom.storage import publishing\n"
        "with publishing(sys.argv[1]) as temporary:\n"
        "    temporary.write_text('half')\n"
        "    print(temporary.name, flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(final)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        leftover = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert final.read_text() == "old"
    assert leftover.startswith(f"{TMP_MARK}{child.pid}-") and leftover.endswith("-out.bin")
    assert (tmp_path / leftover).read_text() == "half"
