"""kopf's login and cleanup for the operator process (handlers.lifecycle) over a fake runtime:
Credentials become kopf.ConnectionInfo, a failing credentials call a kopf.TemporaryError, and
cleanup stops what the runtime runs (issue 15)."""

from __future__ import annotations

import asyncio
import datetime

import fakes
import kopf
import pytest

from homeostat import ports
from homeostat.handlers import lifecycle
from homeostat.handlers import runtime as rt

EXPIRES = datetime.datetime(2026, 12, 7, 9, 0, tzinfo=datetime.UTC)

LOGINS = [
    # (the credentials the CLI loaded, the ConnectionInfo fields that follow from them)
    pytest.param(
        ports.Credentials(
            server="https://10.0.0.1:6443",
            ca_data="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            token="s3cr3t",
            namespace="homeostat",
            expiration=EXPIRES,
        ),
        {
            "server": "https://10.0.0.1:6443",
            "ca_data": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            "scheme": "Bearer",
            "token": "s3cr3t",
            "certificate_data": None,
            "private_key_data": None,
            "default_namespace": "homeostat",
            "expiration": EXPIRES,
            "insecure": False,
            "trust_env": True,
        },
        id="token",
    ),
    pytest.param(
        ports.Credentials(
            server="https://kind:6443",
            insecure=True,
            certificate_data=b"CERT",
            private_key_data=b"KEY",
            proxy_url="http://proxy:3128",
        ),
        {
            "server": "https://kind:6443",
            "scheme": None,
            "token": None,
            "certificate_data": b"CERT",
            "private_key_data": b"KEY",
            "proxy_url": "http://proxy:3128",
            "insecure": True,
            "default_namespace": None,
            "expiration": None,
        },
        id="client-certificate",
    ),
]


@pytest.mark.parametrize(("creds", "expected"), LOGINS)
def test_login_hands_kopf_the_credentials_the_cli_loaded(
    creds: ports.Credentials, expected: dict[str, object]
) -> None:
    calls: list[int] = []

    async def credentials() -> ports.Credentials:
        calls.append(1)
        return creds

    runtime = fakes.runtime_of(credentials=credentials)
    info = fakes.run(lifecycle.login(memo={rt.MEMO_KEY: runtime}))
    assert isinstance(info, kopf.ConnectionInfo)
    assert {key: getattr(info, key) for key in expected} == expected
    assert calls == [1]  # asked each login, never cached: kopf logs in again after a 401


def test_a_failing_credentials_call_is_a_temporary_error_kopf_retries() -> None:
    async def credentials() -> ports.Credentials:
        raise ports.Unavailable("exec plugin exited 1")

    runtime = fakes.runtime_of(credentials=credentials)
    with pytest.raises(kopf.TemporaryError) as raised:
        fakes.run(lifecycle.login(memo={rt.MEMO_KEY: runtime}))
    assert "exec plugin exited 1" in str(raised.value)
    assert raised.value.delay == 10


def test_login_without_a_runtime_in_the_memo_is_a_permanent_error() -> None:
    with pytest.raises(kopf.PermanentError):
        fakes.run(lifecycle.login(memo={}))


def test_cleanup_cancels_the_runtimes_tasks_and_posts_the_events_still_queued() -> None:
    async def scenario() -> tuple[list[str], bool]:
        runtime = fakes.runtime_of()
        loop = asyncio.create_task(asyncio.sleep(3600))
        runtime.periodic.task = loop
        runtime.event(fakes.service(), "Normal", "ScaledUp", "2 -> 5")
        await lifecycle.stop(memo={rt.MEMO_KEY: runtime})
        await asyncio.sleep(0)
        assert isinstance(runtime.events, fakes.FakeEvents)
        # Read here: once the scenario returns, asyncio.run cancels whatever is left anyway.
        return runtime.events.reasons(), loop.cancelled()

    reasons, cancelled = fakes.run(scenario())
    assert cancelled
    assert reasons == ["ScaledUp"]
