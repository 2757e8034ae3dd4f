"""Which process runs a flow run: records, and telling a gone process from a live one."""

from __future__ import annotations

import json
import os
import socket
import subprocess

from headroom.prefect import runs


def test_a_live_process_is_not_gone_a_dead_or_reused_pid_is(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADROOM_STATE_DIR", str(tmp_path))
    runs.record_process("live")
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "runs"
    host = socket.gethostname()
    (folder / "dead.json").write_text(json.dumps({"host": host, "pid": dead.pid, "start": 1}))
    # Our own pid, but another process's start time: the pid was reused.
    (folder / "reused.json").write_text(json.dumps({"host": host, "pid": os.getpid(), "start": 1}))
    (folder / "elsewhere.json").write_text(
        json.dumps({"host": f"not-{host}", "pid": dead.pid, "start": 1})
    )
    found = runs.gone(["live", "dead", "reused", "elsewhere", "unknown"])
    assert sorted(found) == ["dead", "reused"]
    assert f"pid {dead.pid} on {host}" in found["dead"]
    runs.forget_process("live")
    assert not (folder / "live.json").exists()


def test_process_start_survives_a_command_name_with_spaces_and_parentheses(tmp_path):
    script = tmp_path / "a b) (c"
    script.write_text("#!/bin/sh\nsleep 5\n")
    script.chmod(0o755)
    child = subprocess.Popen([str(script)])
    try:
        assert runs.process_start(child.pid) == runs.process_start(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    assert runs.process_start(child.pid) is None
