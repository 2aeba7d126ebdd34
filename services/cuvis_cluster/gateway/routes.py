"""What the routing layer tells the forwarding layer: where a call goes (:class:`Route`), what must
be known first (:class:`Plan`), and the interface a router implements (:class:`Router`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cuvis_cluster import errors

if TYPE_CHECKING:
    from cuvis_cluster.gateway.proxy import Call


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and what the worker must be told."""

    address: str
    instance: str = ""
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    local: bool = False


@dataclass(slots=True)
class Plan:
    """What the router needs before it can route a call."""

    method: str  # short label for metrics, e.g. "Inference"
    field_number: int = 0  # request field to scan for (0: route on headers alone)
    field_name: str = "session_id"
    resolve: Callable[[Call, str], Route | Awaitable[Route]] | None = None
    route: Route | None = None  # decided from the headers alone
    error: errors.CuvisError | None = None
    after: Callable[[Call, int, str], None] | None = None  # sees the final status
    max_message: int = 0  # largest request message accepted (0: no limit)


class Router:
    """Interface the front end needs from the routing layer."""

    # The cluster credential sent to workers on every forwarded call (None: workers trust any caller).
    cluster_token: bytes | None = None

    def plan(self, call: Call) -> Plan:  # pragma: no cover - interface
        raise NotImplementedError

    def upstream_lost(self, route: Route, exc: BaseException | None) -> None:
        """A worker connection failed (connect error or lost mid-call)."""
