"""The shared error handling (one line, an exit code) and the process records `down` trusts."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from streamflow import errors, processes
from tests.cli_support import wait_until


def _error(name: str, module: str, base: type[Exception] = Exception) -> type[Exception]:
    return type(name, (base,), {"__module__": module})


def test_product_errors_are_recognised_by_name_wherever_they_live() -> None:
    # Found by class name and top-level package: moving a class between modules changes nothing.
    no_snapshot = _error("NoSnapshotError", "streamflow.features.snapshots", LookupError)
    assert str(errors.as_user_error(no_snapshot("no snapshot at as_of 2023-12-31;\n x"))) == (
        "no snapshot at as_of 2023-12-31; x"
    )
    no_model = errors.as_user_error(_error("NoProductionModel", "streamflow.model.loader")("no version"))
    assert no_model is not None and no_model.hint and "streamflow promote" in no_model.hint
    down = errors.as_user_error(_error("DatabaseUnavailable", "streamflow.db")("cannot connect"))
    assert down is not None and down.exit_code == errors.EXIT_DATABASE
    contract = errors.as_user_error(_error("ContractError", "streamflow.data.validate")("bad:\n  - a"))
    assert str(contract).endswith("\nnothing was written") and contract.exit_code == errors.EXIT_USER
    feast = errors.as_user_error(_error("FeatureServiceNotFoundException", "feast.errors")("churn_v1"))
    assert str(feast).endswith("run `streamflow features apply`")
    bucket = _error("ArtifactStoreError", "streamflow.training.tracking", RuntimeError)
    store = errors.as_user_error(bucket("s3://models: bucket does not exist"))
    assert store is not None and store.exit_code == errors.EXIT_USER
    assert str(store).startswith("s3://models: bucket does not exist: check STREAMFLOW_ARTIFACTS_URI")
    pruned = errors.as_user_error(
        _error("RevisionNotFound", "streamflow.data.revisions")("revision 1 of 2024-01-31 was pruned")
    )
    assert pruned is not None and pruned.exit_code == errors.EXIT_USER
    assert str(pruned).startswith("revision 1 of 2024-01-31 was pruned: ")
    # The same names elsewhere, and anything else, are bugs: no disguise as a user error.
    assert errors.as_user_error(_error("NoSnapshotError", "somewhere.else")("x")) is None
    assert errors.as_user_error(KeyError("x")) is None


def test_a_record_names_one_process_for_its_life() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        rec = processes.record(child.pid)
        assert processes.verify(rec) is not None
        same_pid_other_start = processes.ProcessRecord(rec.pid, rec.started - 10, rec.argv)
        assert processes.verify(same_pid_other_start) is None
        assert processes.stop_verified(same_pid_other_start) is False and child.poll() is None
        assert processes.stop_verified(rec) is True
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert processes.verify(rec) is None  # gone
    finally:
        if child.poll() is None:
            child.kill()


def test_stop_group_stops_every_member(tmp_path) -> None:
    leader = processes.spawn(["sh", "-c", "sleep 60 & sleep 60 & wait"], tmp_path / "log")

    def members() -> list[int]:
        return [p.pid for p in psutil.process_iter() if processes._pgid(p.pid) == leader.pid]

    wait_until(lambda: len(members()) == 3, 10, "sh and its two sleeps")
    assert processes.stop_group(leader.pid, timeout_s=10, reap=leader.poll) is True
    assert not processes.group_alive(leader.pid)


def test_a_signal_during_a_deferred_block_arrives_after_it() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), processes.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("the block finished first")
    assert done == ["the block finished first"]
