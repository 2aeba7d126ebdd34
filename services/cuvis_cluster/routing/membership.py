"""The membership protocol: the record each worker keeps registered, and how both sides word a loss.

A worker writes :meth:`WorkerInfo.fields` into its registration hash with every heartbeat (see
:mod:`.redis_schema`); a gateway reads the hash back with :meth:`WorkerInfo.from_fields` on every
poll. The hash expires when the heartbeats stop, which is how gateways notice a dead worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def _int(value: str | None) -> int:
    """A numeric hash field; missing or malformed reads as 0."""
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One registered worker instance, as its last heartbeat described it."""

    instance: str
    address: str
    capacity: int = 0
    sessions: int = 0
    device: str = "cpu"
    device_free: int = 0
    device_total: int = 0
    draining: bool = False
    version: str = ""
    updated_ms: int = 0
    started_ms: int = 0

    @property
    def has_room(self) -> bool:
        return self.sessions < self.capacity

    def fields(self) -> dict[str, str | int]:
        """The registration hash's fields, as the heartbeat writes them."""
        return {
            "instance": self.instance,
            "address": self.address,
            "version": self.version,
            "device": self.device,
            "device_free": self.device_free,
            "device_total": self.device_total,
            "capacity": self.capacity,
            "sessions": self.sessions,
            "draining": 1 if self.draining else 0,
            "started_ms": self.started_ms,
            "updated_ms": self.updated_ms,
        }

    @classmethod
    def from_fields(cls, instance: str, fields: Mapping[str, str]) -> WorkerInfo:
        """Read a registration hash back; ``instance`` is the index entry the hash belongs to."""
        return cls(
            instance=instance,
            address=fields.get("address", ""),
            capacity=_int(fields.get("capacity")),
            sessions=_int(fields.get("sessions")),
            device=fields.get("device", ""),
            device_free=_int(fields.get("device_free")),
            device_total=_int(fields.get("device_total")),
            draining=fields.get("draining") == "1",
            version=fields.get("version", ""),
            updated_ms=_int(fields.get("updated_ms")),
            started_ms=_int(fields.get("started_ms")),
        )


def describe(address: str, instance: str) -> str:
    """How lost-session messages name a worker; clients see both parts in NOT_FOUND / UNAVAILABLE."""
    return f"worker {address} (instance {instance})"
