"""Which failures the Prefect flows retry (the retry condition alone: no server)."""

from __future__ import annotations


def test_contract_violations_are_not_retried(tmp_path) -> None:
    """Retrying cannot fix bad data: the retry condition says no for ContractError only."""
    from prefect.states import Failed

    from streamflow.data.validate import ContractError, Violation
    from streamflow.flows import _retry_unless_bad_data

    bad = Failed(data=ContractError(tmp_path, [Violation("labels.csv", "file is missing")]))
    flaky = Failed(data=ConnectionError("server closed the connection"))
    assert _retry_unless_bad_data(None, None, bad) is False
    assert _retry_unless_bad_data(None, None, flaky) is True
