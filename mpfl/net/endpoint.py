"""Where the broker is: ``mqtt://host:port`` or ``mqtts://host:port``, and credentials.

Parsing only; the services connect. Credentials come from flags or from the environment
(``MPFL_USERNAME`` / ``MPFL_PASSWORD``), never from the URL, so they stay out of process
listings and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mpfl.errors import ConfigError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# How long a service waits for its broker before it says so and exits (BrokerUnreachable);
# here, not in the client module, so a command's --help needs no paho.
DEFAULT_CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print a password
        return f"BrokerAddress({self.url}, user={self.username!r})"


def parse_broker_url(
    url: str,
    *,
    ca_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> BrokerAddress:
    """``mqtt://host[:port]`` / ``mqtts://host[:port]`` (or bare ``host[:port]``)."""
    text = url.strip()
    if "://" not in text:
        text = f"mqtt://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad broker address: {exc}", broker=url) from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise ConfigError("broker URL must start with mqtt:// or mqtts://", broker=url)
    if not parts.hostname:
        raise ConfigError("broker URL has no host", broker=url)
    if parts.username or parts.password:
        raise ConfigError("put credentials in MPFL_USERNAME / MPFL_PASSWORD, not the URL")
    if parts.path not in ("", "/"):
        raise ConfigError("broker URL must not have a path", broker=url)
    tls = parts.scheme == "mqtts"
    if ca_file is not None and not tls:
        raise ConfigError("--ca-file needs an mqtts:// broker URL", broker=url)
    env = environ if environ is not None else {}
    return BrokerAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=tls,
        ca_file=ca_file,
        username=username or env.get("MPFL_USERNAME") or None,
        password=password or env.get("MPFL_PASSWORD") or None,
    )
