"""docs/ARCHITECTURE.md and its pictures follow the code: the script that draws them runs and
reads the tree, every package has a paragraph, and every function of the task's path exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def architecture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts/architecture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_script_writes_both_pictures(tmp_path: Path):
    subprocess.run(
        [sys.executable, "scripts/architecture.py", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for name in ("architecture-packages.png", "architecture-task-path.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 1000 and height > 800, (name, width, height)
        # The document shows the committed copy of each picture.
        assert f"](img/{name})" in DOC.read_text()
        assert (ROOT / "docs" / "img" / name).is_file()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_packages_and_imports_are_read_from_the_tree(architecture, tmp_path, monkeypatch):
    _write(
        tmp_path,
        {
            "headroom/__init__.py": "",
            "headroom/core.py": "import os\n",
            "headroom/mechanism/__init__.py": "",
            "headroom/mechanism/part.py": "from headroom import core\n",
            "headroom/api/__init__.py": "",
            "headroom/api/task.py": "import prefect\nfrom ..mechanism.part import x\n",
            "flows/__init__.py": "",
            "flows/job/__init__.py": "",
            "flows/job/flow.py": "from headroom.api import task\nfrom . import body\n",
            "flows/job/body.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import deployments.run\n"
                "def later():\n    from headroom.core import y\n"
            ),
            "flows/job/sources/__init__.py": "",
            "flows/job/sources/feed.py": "from flows.job import body\n",
            "deployments/__init__.py": "",
            "deployments/run.py": "from flows.job.flow import job\n",
        },
    )
    monkeypatch.setattr(architecture, "ROOT", tmp_path)
    packages, edges = architecture.read_packages()
    assert dict(edges) == {
        ("headroom.mechanism", "headroom"): 1,
        ("headroom.api", "headroom.mechanism"): 1,
        ("flows.job", "headroom.api"): 1,
        ("flows.job", "headroom"): 1,  # imported inside a function
        ("deployments", "flows.job"): 1,
    }  # the import under TYPE_CHECKING, and those inside one box, are no edges
    assert packages["flows.job"].subpackages == {"sources": 1}
    assert sorted(packages["flows.job"].modules) == ["body", "flow"]
    layers = {name: architecture.layer_of(p) for name, p in packages.items()}
    assert layers == {
        "deployments": 0,
        "flows.job": 1,
        "flows": 2,
        "headroom.api": 3,  # it imports prefect
        "headroom.mechanism": 4,
        "headroom": 5,
    }


def _package_directories() -> set[str]:
    found = set()
    for top in ("headroom", "flows", "deployments"):
        for path in (ROOT / top).rglob("*.py"):
            found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_package_directory_has_its_paragraph():
    named = {
        name.strip("/").replace("/", ".")
        for name in re.findall(r"\*\*`([\w./]+)`\*\*", DOC.read_text())
    }
    packages = _package_directories()
    assert {"headroom.isolation", "flows.stream_stats.sources", "deployments.production"} <= (
        packages
    )
    assert sorted(packages - named) == []


def _path_steps() -> list[str]:
    section = DOC.read_text().split("## One budgeted task's path", 1)[1]
    return re.split(r"\n(?=\d+\. )", section.split("\n1. ", 1)[1])


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_function_of_the_task_path_exists_and_the_picture_names_the_same(architecture):
    steps = _path_steps()
    assert len(steps) == len(architecture.PATH)
    for number, (text, step) in enumerate(zip(steps, architecture.PATH, strict=True), start=1):
        named = re.findall(r"`(headroom\.[\w.]+)`", text)
        assert named, f"step {number} names no function"
        for dotted in named:
            assert callable(_resolve(dotted)), dotted
        assert set(named) == set(step.functions), f"step {number}"


def test_the_path_check_catches_a_function_that_is_gone(architecture):
    assert architecture.defined("headroom.prefect.attempts.AttemptLog.last_oom")
    assert not architecture.defined("headroom.prefect.attempts.AttemptLog.no_such_method")
    assert not architecture.defined("headroom.prefect.task.no_such_function")
    with pytest.raises(AttributeError):
        _resolve("headroom.prefect.task.no_such_function")
