"""Connection settings of the ``cuvis-ai`` CLI and the examples: flags, ``CUVIS_*`` environment, defaults.

Same rule as the servers (:mod:`cuvis_cluster.common.settings`): field ``ca_file`` is flag ``--ca-file`` and
environment variable ``CUVIS_CA_FILE``; a flag beats the environment, which beats the default. The names do
not collide with the servers' own (``CUVIS_TLS_CERT`` is a server certificate; the client's is
``CUVIS_CLIENT_CERT``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cuvis_cluster.client import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_SIZE,
    Client,
    KeepAliveOptions,
    connect,
)


class ClientSettings(BaseSettings):
    """How to reach and authenticate to a gateway."""

    model_config = SettingsConfigDict(env_prefix="CUVIS_", extra="ignore")

    address: str = Field(DEFAULT_ADDRESS, description="Gateway HOST:PORT (grpcs:// prefix = TLS).")
    tls: bool | None = Field(
        None, description="Use TLS (default: on when a CA, client cert or server name is set)."
    )
    ca_file: Path | None = Field(None, description="PEM CA bundle that signed the gateway certificate.")
    client_cert: Path | None = Field(None, description="PEM client certificate for mTLS.")
    client_key: Path | None = Field(None, description="PEM key of the client certificate.")
    server_name: str | None = Field(None, description="Name expected in the gateway certificate.")
    token: str | None = Field(None, description="Bearer token sent with every call.")
    token_file: Path | None = Field(None, description="File whose first line is the bearer token.")
    max_message_bytes: int = Field(
        MAX_MESSAGE_SIZE, gt=0, lt=1 << 31, description="Largest message, both ways."
    )
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, description="Deadline of quick calls in seconds.")
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the gateway to accept a connection."
    )
    keepalive_seconds: float | None = Field(
        None, gt=0, description="HTTP/2 keepalive ping period (default off)."
    )

    def bearer_token(self) -> str | None:
        if self.token:
            return self.token
        if self.token_file is not None:
            lines = self.token_file.expanduser().read_text().split()
            return lines[0] if lines else None
        return None

    def connect(self) -> Client:
        return connect(
            self.address,
            tls=self.tls,
            root_certificates=self.ca_file,
            client_certificate=self.client_cert,
            client_key=self.client_key,
            server_name=self.server_name,
            token=self.bearer_token(),
            max_message_size=self.max_message_bytes,
            keepalive=KeepAliveOptions(time_s=self.keepalive_seconds) if self.keepalive_seconds else None,
            timeout=self.timeout,
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag per field; unset flags fall back to the environment, then the default."""
        group = parser.add_argument_group("connection (each flag also reads CUVIS_<NAME>)")
        for name, info in cls.model_fields.items():
            flag = "--" + name.replace("_", "-")
            env = "CUVIS_" + name.upper()
            kwargs: dict[str, Any] = {"dest": f"conn_{name}", "default": argparse.SUPPRESS}
            if name != "tls":
                kwargs["metavar"] = name.upper()
            kwargs["help"] = f"{info.description} [env {env}; default {info.default!r}]".replace("%", "%%")
            if name == "tls":
                kwargs["action"] = argparse.BooleanOptionalAction
            group.add_argument(flag, **kwargs)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> ClientSettings:
        given = {k.removeprefix("conn_"): v for k, v in vars(namespace).items() if k.startswith("conn_")}
        return cls(**given)
