"""A ``kfp.Client`` whose requests are bounded (``FASTPRUNE_REMOTE_TIMEOUT``) and whose start-up health check says
what went wrong: an authentication failure (HTTP 401/403) as such, a hung or unreachable server with the time it was
given, instead of kfp's "TimeoutError: Failed getting healthz endpoint after 5 attempts" (after 25 s of retries on
a refused token, or never on a server that does not answer)."""

from __future__ import annotations

from typing import Any

from ..common.errors import FastpruneError
from ..common.ops.remote import ATTEMPTS, BACKOFF, bound_description, redact, remote_timeout

AUTH_HINT = "set a valid bearer token (KFP_TOKEN or --token-file / KFP_TOKEN_FILE) or session cookies (KFP_COOKIES)"


class KfpConnectionError(FastpruneError):
    """The Kubeflow Pipelines API refused the credentials, could not be reached, or did not answer in time."""


def auth_failure(host: str, status: int, action: str) -> KfpConnectionError:
    return KfpConnectionError(
        f"Kubeflow Pipelines at {redact(host)} refused the credentials while {action} "
        f"(HTTP {status}: authentication failed): {AUTH_HINT}"
    )


def bound_requests(api_client: Any) -> None:
    """Give every request of a ``kfp_server_api.ApiClient`` the connect/read timeout and bounded retries unless the
    call sets its own (idempotent)."""
    import urllib3

    rest = api_client.rest_client
    if getattr(rest, "_fastprune_bounded", False):
        return
    timeout = remote_timeout()
    request = rest.request

    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or (timeout, timeout), **kwargs)

    rest.request = bounded
    rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(
        total=ATTEMPTS - 1, connect=ATTEMPTS - 1, read=ATTEMPTS - 1, backoff_factor=BACKOFF, raise_on_status=False
    )
    rest.pool_manager.clear()
    rest._fastprune_bounded = True


def client_class():
    """``kfp.Client`` (looked up now, so a test's stand-in is used) with the bounded health check."""
    import kfp

    class BoundedClient(kfp.Client):  # type: ignore[misc, valid-type]
        def get_kfp_healthz(self, sleep_duration: int = 0) -> Any:
            import kfp_server_api
            import urllib3

            api_client = self._healthz_api.api_client
            bound_requests(api_client)
            host = api_client.configuration.host
            try:
                return self._healthz_api.healthz_service_get_healthz()
            except kfp_server_api.ApiException as e:
                if e.status in (401, 403):
                    raise auth_failure(host, e.status, "checking its health (healthz)") from None
                raise KfpConnectionError(
                    f"Kubeflow Pipelines at {redact(host)} failed its health check (healthz): "
                    f"HTTP {e.status} {e.reason or ''}".rstrip()
                ) from None
            except urllib3.exceptions.HTTPError as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, urllib3.exceptions.TimeoutError):
                    raise KfpConnectionError(
                        f"Kubeflow Pipelines at {redact(host)} did not answer its health check "
                        f"(healthz): timed out after {bound_description()}"
                    ) from None
                raise KfpConnectionError(
                    f"cannot reach Kubeflow Pipelines at {redact(host)} "
                    f"({type(reason).__name__}, {bound_description()}): check --host / KFP_HOST "
                    "and the network"
                ) from None

    return BoundedClient


def new_client(**kwargs: Any) -> Any:
    """A bounded ``kfp.Client(**kwargs)``."""
    client = client_class()(**kwargs)
    api = getattr(client, "_healthz_api", None)
    if api is not None:  # a real client (the health check is skipped when a namespace is given)
        bound_requests(api.api_client)
    return client
