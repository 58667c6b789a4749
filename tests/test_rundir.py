"""The run store: atomic writes, locks, JSONL, metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmbench_cli.errors import MMError
from mmbench_cli.rundir import (
    RunDir,
    RunLock,
    append_jsonl,
    atomic_dir,
    atomic_write_json,
    read_jsonl,
    read_status,
    run_metadata,
    write_status,
)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "step_4"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "w").write_text("two")
        raise RuntimeError("killed")
    assert (target / "w").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4"]


def test_read_jsonl_skips_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with path.open("a") as handle:
        handle.write('{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_read_jsonl_rejects_corruption_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(MMError, match="line 2"):
        read_jsonl(path)


def test_lock_refuses_second_writer_and_reclaims_dead_one(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(MMError, match="being written by pid"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    # a lock left by a process that died (kill -9) is reclaimed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] != int(dead.stdout)


def test_status_and_metadata(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    write_status(tmp_path, "running")
    assert read_status(tmp_path) == "running"
    with pytest.raises(ValueError):
        write_status(tmp_path, "exploded")
    meta = run_metadata(seed=3)
    assert meta["seed"] == 3
    assert meta["versions"]["torch"].startswith("2.13")
    assert "python" in meta["versions"]


def _small_run(path: Path) -> RunDir:
    run = RunDir(path)
    run.write_config("seed: 1\n")
    run.write_status("done")
    run.append_metrics({"step": 1, "loss": 2.0})
    (run.checkpoint_dir(1)).mkdir(parents=True)
    (run.checkpoint_dir(1) / "checkpoint.json").write_text('{"step": 1}')
    return run


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_set_aside_then_restore_or_drop(tmp_path: Path) -> None:
    run = _small_run(tmp_path / "run")
    before = _files(run.path)
    run.set_aside()
    assert not run.config_path.exists() and run.has_set_aside()
    run.write_config("seed: 2\n")  # the new run's files
    run.append_metrics({"step": 1, "loss": 9.0})
    assert run.restore_set_aside() and not run.has_set_aside()
    assert _files(run.path) == before
    run.set_aside()
    run.write_config("seed: 2\n")
    run.drop_set_aside()
    assert not run.has_set_aside() and run.read_config_text() == "seed: 2\n" and not run.checkpoints_dir.exists()


def test_restore_after_a_kill_half_way_through_setting_aside(tmp_path: Path) -> None:
    run = _small_run(tmp_path / "run")
    before = _files(run.path)
    run.set_aside()
    # as if killed after the manifest and the first renames: put config.yaml and status back where they were
    for name in ("config.yaml", "status"):
        (run.replaced_dir / name).rename(run.path / name)
    assert run.recover() == [f"{run.path}: restored the run that an interrupted --force was replacing"]
    assert _files(run.path) == before
    assert run.recover() == []  # nothing left to repair


def test_read_jsonl_refuses_non_objects_and_non_utf8_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n{"a": 2}\n')
    with pytest.raises(MMError, match="line 2: expected a JSON object"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 2}\n')
    with pytest.raises(MMError, match="line 2 is not UTF-8"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xe2\x82')  # a torn multi-byte character on the last line: skipped
    assert read_jsonl(path) == [{"a": 1}]
