"""Every call is someone: the principal, from the transport and never from what the client says.

- Unix socket: the kernel's peer credentials of the connecting process (PeerCredentialRelay).
- TCP with TLS: the verified client certificate's common name (or first subject alternative
  name); gRPC has checked it against ``--tls-client-ca`` before any handler runs.
- Plain TCP (only with ``--insecure-tcp``, only on loopback): nobody in particular,
  ``tcp:anonymous``.

``IdentityInterceptor`` resolves the principal once per call, before the handler runs, and
hands it to the handler in ``current_principal``; a call it cannot identify ends with
UNAUTHENTICATED. Health and reflection stay open to everyone (a container's health probe has no
identity to give).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from kqd.daemon.credentials import Credentials
from kqd.daemon.interceptors import rewrap
from kqd.daemon.peer_relay import PeerCredentialRelay

ANONYMOUS_TCP = "tcp:anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``name`` is what logs, ownership and quotas use; ``peer`` the local
    identity the kernel gave (Unix socket), None for remote principals."""

    name: str
    peer: Credentials | None = None

    @classmethod
    def local(cls, creds: Credentials) -> Principal:
        return cls(f"uid:{creds.uid}", creds)


current_principal: ContextVar[Principal] = ContextVar("current_principal")


def _certificate_name(context: grpc.aio.ServicerContext) -> str | None:
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key)
        if values:
            return f"tls:{values[0].decode()}"
    return None


class IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Sets ``current_principal`` for every call of the services named *guarded*."""

    def __init__(self, guarded: tuple[str, ...], relays: list[PeerCredentialRelay]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in guarded)
        self._relays = relays

    def identify(self, context: grpc.aio.ServicerContext) -> Principal | None:
        peer = context.peer()
        if peer.startswith("unix:"):
            for relay in self._relays:
                creds = relay.credentials(peer)
                if creds is not None:
                    return Principal.local(creds)
            return None
        if context.auth_context().get("transport_security_type") == [b"ssl"]:
            name = _certificate_name(context)
            return None if name is None else Principal(name)
        return Principal(ANONYMOUS_TCP)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        return rewrap(handler, lambda behaviour, _: self._guard(behaviour))

    def _guard(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def who(context: grpc.aio.ServicerContext) -> Principal:
            principal = self.identify(context)
            if principal is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "kqd cannot tell who is calling: connect through its Unix socket, or over "
                    "TLS with a client certificate",
                )
            assert principal is not None
            return principal

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
                current_principal.set(await who(context))
                async for item in behaviour(request, context):
                    yield item

            return streaming

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_principal.set(await who(context))
            return await behaviour(request, context)

        return call
