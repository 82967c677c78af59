"""kopf wiring for the operator process itself: logging in, and stopping what the runtime runs.

kopf logs in with exactly the configuration the CLI loaded and checked (a flag, in-cluster or
the environment), as data, so kopf and the operator's own calls act as one identity; kopf logs
in again after a 401 and when ``expiration`` passes.
"""

from __future__ import annotations

from typing import Any

import kopf

from homeostat import ports
from homeostat.handlers import runtime as rt


@kopf.on.login()
async def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    try:
        creds = await rt.of(memo).credentials()
    except ports.Unavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from None  # e.g. a failing plugin
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_data=creds.ca_data,
        insecure=creds.insecure,
        scheme="Bearer" if creds.token else None,
        token=creds.token,
        certificate_data=creds.certificate_data,
        private_key_data=creds.private_key_data,
        proxy_url=creds.proxy_url,
        trust_env=True,  # HTTPS_PROXY/NO_PROXY, as the operator's own calls read them
        default_namespace=creds.namespace,
        expiration=creds.expiration,
    )


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
    await rt.of(memo).stop()
