"""Pooled HTTP/2 connections from the gateway to the workers (and to its own local services)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cuvis_cluster import errors
from cuvis_cluster.gateway.h2frames import H2Limits, SlabPool
from cuvis_cluster.gateway.h2link import DEFAULT_LIMITS, Link


class Upstreams:
    """Pooled HTTP/2 connections to workers (and to the gateway's local services, ``local:HOST:PORT``)."""

    def __init__(
        self,
        *,
        ssl_context: Any = None,
        server_name: str | None = None,
        pool: SlabPool,
        limits: H2Limits = DEFAULT_LIMITS,
        connect_timeout: float = 5.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.limits = limits
        self.server_name = server_name
        self.pool = pool
        self._links: dict[str, list[Link]] = {}
        self._connecting: dict[str, asyncio.Future[Link]] = {}
        self.on_lost: Callable[[str, BaseException | None], None] | None = None

    def ready(self, address: str) -> Link | None:
        for link in self._links.get(address, ()):
            if link.can_open():
                return link
        return None

    async def get(self, address: str) -> Link:
        link = self.ready(address)
        if link is not None:
            return link
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(address))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _connect(self, address: str) -> Link:
        loop = asyncio.get_running_loop()

        def factory() -> Link:
            return Link(
                client_side=True,
                on_lost=self._lost,
                limits=self.limits,
                pool=self.pool,
                name=f"upstream {address}",
            )

        try:
            if address.startswith("unix:"):
                coro = loop.create_unix_connection(factory, address[5:])
            else:
                # "local:HOST:PORT" is the gateway's own services: loopback, never TLS.
                local = address.startswith("local:")
                host, _, port = address.removeprefix("local:").rpartition(":")
                host = host.strip("[]")
                ssl = None if local else self.ssl_context
                coro = loop.create_connection(
                    factory,
                    host,
                    int(port),
                    ssl=ssl,
                    server_hostname=(self.server_name or host) if ssl else None,
                )
            _transport, link = await asyncio.wait_for(coro, self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise errors.Unavailable(f"cannot connect to worker {address}: {reason(exc)}") from None
        link.extra["address"] = address
        self._links.setdefault(address, []).append(link)
        return link

    def _lost(self, link: Link, exc: BaseException | None) -> None:
        address = link.extra.get("address", "")
        links = self._links.get(address)
        if links and link in links:
            links.remove(link)
            if not links:
                del self._links[address]
        if self.on_lost is not None and address and not address.startswith(("unix:", "local:")):
            self.on_lost(address, exc)

    def drop(self, address: str) -> None:
        """Close every connection to ``address`` (its worker was declared lost)."""
        for link in list(self._links.get(address, ())):
            link.abort()

    def close(self) -> None:
        for links in list(self._links.values()):
            for link in list(links):
                link.close()


def reason(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    if str(exc):
        return str(exc)  # e.g. the keepalive's "no answer to a keepalive PING within 3 s"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return type(exc).__name__
