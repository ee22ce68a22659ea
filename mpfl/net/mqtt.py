"""The MQTT client of both services: the only module of the project that imports paho.

The coordinator and the edge agent must not import each other, and their clients would be
line for line the same, so the one client lives here, behind the ``Transport`` seam; the
rest of ``mpfl`` stays free of network I/O and is tested without a broker.

paho-mqtt 2.x with callback API version 2. MQTT v5 when the broker offers it, else
v3.1.1 (the embedded amqtt broker speaks only 3.1.1 and refuses a v5 CONNECT with
"unsupported protocol version"). The network loop runs in paho's own thread
(``loop_start``), which reconnects with backoff; incoming messages only go on an
``Inbox`` that the service drains on its main thread. The session is persistent
(clean start off, a long session expiry under v5), so QoS 1 uploads queued by the broker
while the coordinator was away are delivered when it is back; subscriptions are renewed
on every connect anyway, since a restarted broker forgets them. A node's client also sets
a retained last will "offline" on its status topic, made afresh before every (re)connect
(``will`` is a callable): a signed will carries a counter, and the broker would otherwise
publish the first connection's will again after each reconnect, which the coordinator
rejects as a replay.

Reconnecting is prompt: paho's back-off runs from RECONNECT_MIN_S to RECONNECT_MAX_S, so
a node whose network returns is back in time for the open round; a fleet of N nodes then
costs a down broker N / RECONNECT_MAX_S refused CONNECTs a second.

Payloads over the chunk limit are split (``mpfl.wire.chunks``); the limit is the smaller of
``max_payload`` and the Maximum-Packet-Size a v5 broker announces in its CONNACK.
Retained messages are never split: one over the broker's announced limit is refused.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mpfl.errors import (
    BrokerRefused,
    BrokerUnreachable,
    ConfigError,
    FederationError,
    Interrupted,
    TlsError,
)
from mpfl.net.acks import PendingPublishes
from mpfl.net.endpoint import DEFAULT_CONNECT_TIMEOUT_S, BrokerAddress
from mpfl.net.inbox import Inbox
from mpfl.wire.chunks import HEADER_SIZE, split_payload
from mpfl.wire.protocol import Publish

DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB chunks unless told otherwise: EMQX's default limit
SESSION_EXPIRY_S = 7 * 24 * 3600
CONNACK_TIMEOUT_S = 5.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 2.0
_SLICE_S = 0.1  # longest sleep between two looks at a stop request
_REPORT_EVERY_S = 10.0  # "still cannot reach" lines while waiting for a broker
# paho retries at least every RECONNECT_MAX_S; a connection still down after this long is
# started anew, since paho's own loop can wedge after a broker restart and never come back.
STALLED_S = 45.0
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
_BAD_PROTOCOL = {"Unsupported protocol version", "Unacceptable protocol version"}
_BAD_AUTH = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}
_PACKET_OVERHEAD = 16  # fixed header, topic length, packet id, property length

_log = logging.getLogger(__name__)


class _Retry:
    """Backoff between connect attempts, and a line now and then saying what is awaited."""

    def __init__(self, url: str, timeout: float | None, log: Callable[[str], None]) -> None:
        self.url, self.timeout, self.log = url, timeout, log
        self.started = time.monotonic()
        self.delay = 0.1
        self.last = ""
        self._next_report = self.started

    def failed(self, why: str) -> None:
        self.last = why
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + _REPORT_EVERY_S
        if self.timeout is None:
            left = "retrying until stopped"
        else:
            left = f"retrying for {max(0.0, self.timeout - (now - self.started)):.0f} s more"
        self.log(f"cannot reach {self.url} yet ({why}); {left}")

    def next_delay(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, 5.0)
        return delay


class MqttTransport:
    """Publish/subscribe over a real broker; incoming messages land on ``inbox``."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        inbox: Inbox,
        *,
        will: Callable[[], Publish] | None = None,
        protocol: str = "auto",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        keepalive: int = 30,
        log: Callable[[str], None] | None = None,
        should_stop: Callable[[], str | None] | None = None,
    ) -> None:
        if protocol not in ("auto", *PROTOCOLS):
            raise ConfigError("MQTT protocol must be auto, 5 or 3.1.1", protocol=protocol)
        self.address = address
        self.client_id = client_id
        self.inbox = inbox
        self.will = will  # called before every connect: each CONNECT gets a fresh will
        self.protocols = list(PROTOCOLS) if protocol == "auto" else [protocol]
        self.protocol = self.protocols[0]
        self.max_payload = max_payload
        self.broker_max_packet: int | None = None
        self.keepalive = keepalive
        self.log = log or _log.info  # connects, losses and reconnects: one line each
        # The reason a stop was requested (e.g. "SIGTERM"), or None: polled by every wait.
        self.should_stop = should_stop or (lambda: None)
        self.connected = threading.Event()
        self._connack = threading.Event()
        self._connack_reason = ""
        self._client: paho.Client | None = None
        self._pending = PendingPublishes()
        self._closing = False
        self._down_since: float | None = None

    # -- connection -----------------------------------------------------------------------

    def _make_client(self, protocol: str) -> paho.Client:
        v5 = protocol == "5"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=PROTOCOLS[protocol],
                             clean_session=None if v5 else False)
        if self.address.tls:
            client.tls_set(ca_certs=self.address.ca_file)
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        self._set_will(client)
        # paho annotates the delays as int but sleeps on floats.
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
                                   max_delay=RECONNECT_MAX_S)  # type: ignore[arg-type]
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _set_will(self, client: paho.Client) -> None:
        if self.will is not None:
            will = self.will()
            client.will_set(will.topic, will.payload, will.qos, will.retain)

    def connect(self, timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        """Connect (waiting up to ``timeout`` s for the broker to come up; None: forever),
        falling back from v5 to v3.1.1.

        Every wait is sliced so a stop request (``should_stop``) ends it within a fraction
        of a second: ``Interrupted``. Each attempt is a real MQTT connect, TLS handshake
        included, not a bare TCP probe (one that hangs up mid-handshake makes Mosquitto log
        an OpenSSL "unexpected eof", which reads like a TLS fault). A refused login or a
        failed handshake ends the wait at once (``BrokerRefused``, ``TlsError``): retrying
        cannot fix them. A v3.1.1-only broker may answer a v5 CONNECT with "unsupported
        protocol version", or (amqtt, when the CONNECT carries properties) not at all: both
        mean "try 3.1.1".
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        index = 0
        retry = _Retry(self.address.url, timeout, self.log)
        while True:
            self._check_stop()
            self.protocol = self.protocols[index]
            client = self._make_client(self.protocol)
            self._client = client
            self._connack.clear()
            self._connack_reason = ""
            try:
                self._open(client, deadline)
            except ssl.SSLError as exc:
                raise TlsError(f"the TLS handshake with the broker failed: "
                               f"{getattr(exc, 'verify_message', None) or exc.reason or exc}; "
                               "check --ca-file, that the server certificate names this "
                               "host (IP or DNS subjectAltName) and that the port speaks TLS",
                               broker=self.address.url, ca_file=self.address.ca_file) from None
            except OSError as exc:  # refused, unreachable, name not resolved (yet)
                retry.failed(exc.strerror or str(exc))
                self._pause(deadline, retry)
                continue
            client.loop_start()
            answered = self._wait_connack()
            if self.connected.is_set():
                self.log(f"connected to {self.address.url} (MQTT {self.protocol})")
                return
            self._stop_client(client)
            reason = self._connack_reason
            if reason in _BAD_AUTH:
                raise BrokerRefused(f"the broker refused the login: {reason}; check the user "
                                    "name and password (MPFL_USERNAME, MPFL_PASSWORD) and the "
                                    "broker's passwd file", broker=self.address.url,
                                    client_id=self.client_id)
            if (not answered or reason in _BAD_PROTOCOL) and index + 1 < len(self.protocols):
                index += 1
                continue
            if answered:
                raise FederationError(f"the broker refused the connection: {reason}",
                                      broker=self.address.url)
            retry.failed("no answer to CONNECT (an MQTT port? a TLS port needs mqtts://)")
            self._pause(deadline, retry)

    def _open(self, client: paho.Client, deadline: float | None) -> None:
        """TCP connect, TLS handshake and CONNECT, in this thread: errors raise here."""
        left = CONNACK_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        client.connect_timeout = max(0.5, min(CONNACK_TIMEOUT_S, left))
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect(self.address.host, self.address.port, self.keepalive,
                           clean_start=False, properties=properties)
        else:
            client.connect(self.address.host, self.address.port, self.keepalive)

    def _check_stop(self) -> None:
        reason = self.should_stop()
        if reason:
            raise Interrupted(f"stopped ({reason}) while connecting to {self.address.url}")

    def _wait_connack(self) -> bool:
        """Wait for the broker's answer; True if it came (in time slices: a stop ends it)."""
        end = time.monotonic() + CONNACK_TIMEOUT_S
        while not self._connack.wait(_SLICE_S):
            if self.should_stop() and self._client is not None:
                self._stop_client(self._client)
            self._check_stop()
            if time.monotonic() > end:
                return False
        return True

    def _pause(self, deadline: float | None, retry: _Retry) -> None:
        """Sleep before the next attempt, or BrokerUnreachable if the deadline has come."""
        end = time.monotonic() + retry.next_delay()
        while True:
            self._check_stop()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise BrokerUnreachable(
                    f"cannot reach the MQTT broker within {retry.timeout:g} s: {retry.last}; "
                    "check the URL and that the broker runs (--connect-timeout sets how long "
                    "to wait)", broker=self.address.url)
            if now >= end:
                return
            time.sleep(min(_SLICE_S, end - now))

    def _stop_client(self, client: paho.Client) -> None:
        client.disconnect()
        client.loop_stop()

    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connack_reason = str(reason)
        if not reason.is_failure:
            limit = getattr(properties, "MaximumPacketSize", None) if properties else None
            self.broker_max_packet = int(limit) if limit else None
            for topic_filter in self.inbox.filters:
                client.subscribe(topic_filter, qos=1)
            if self._down_since is not None:
                self.log(f"reconnected to {self.address.url} after "
                         f"{time.monotonic() - self._down_since:.1f} s")
            self._down_since = None
            self.connected.set()
            self.inbox.put_connected(bool(getattr(flags, "session_present", False)))
        self._connack.set()

    def _on_disconnect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._pending.connection_lost()
        if not self._closing:
            # paho's loop reconnects after this returns, with the will set now.
            self._set_will(client)
        if was_connected and not self._closing:
            self._down_since = time.monotonic()
            self.log(f"lost the broker ({reason}); reconnecting")

    def revive(self) -> None:
        """Call now and then from the service's loop: replaces a client whose reconnects
        have not succeeded for STALLED_S with a fresh one. Unacknowledged uploads of the old
        client are given up; a node resends its cached round when the coordinator asks."""
        down = self._down_since
        if down is None or self._closing or time.monotonic() - down < STALLED_S:
            return
        old = self._client
        self.log(f"no reconnection for {STALLED_S:.0f} s; starting a fresh connection")
        if old is not None:
            old.on_connect = old.on_disconnect = old.on_message = old.on_publish = None
            # A wedged loop may never return from a join: let a daemon thread wait for it.
            threading.Thread(target=self._stop_client, args=(old,), daemon=True).start()
        self._pending.clear()
        try:
            self.connect(STALLED_S)
        except Interrupted:
            return  # the service's loop sees the same stop request and ends
        except FederationError as exc:
            self.log(f"still no broker ({exc}); will try again")
            self._down_since = time.monotonic()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: Any) -> None:
        self.inbox.put(message.topic, bytes(message.payload))

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        self._pending.taken(mid)

    # -- messages -------------------------------------------------------------------------

    @property
    def chunk_limit(self) -> int:
        """Largest payload sent unsplit (the broker's packet limit less the packet overhead)."""
        if self.broker_max_packet is None:
            return self.max_payload
        return min(self.max_payload, self.broker_max_packet - _PACKET_OVERHEAD - 2 * 256)

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        self.inbox.subscribe(topic_filter, handler)
        if self._client is not None and self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def publish(self, message: Publish) -> None:
        if self._client is None:
            raise FederationError("publish before connect", topic=message.topic)
        if message.retain:
            limit = self.broker_max_packet
            if limit is not None and len(message.payload) + len(message.topic) + 16 > limit:
                raise ConfigError("a retained message exceeds the broker's maximum packet "
                                  "size; raise the broker's max_packet_size",
                                  topic=message.topic, size=len(message.payload),
                                  limit=limit)
            parts = [message.payload]
        else:
            parts = split_payload(message.payload, max(self.chunk_limit, HEADER_SIZE + 1024))
        for part in parts:
            # While disconnected, paho queues a QoS 1 message and sends it on reconnect.
            info = self._client.publish(message.topic, part, message.qos, message.retain)
            self.inbox.ledger.record_sent(message.topic, len(part))
            if message.qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS:
                continue  # QoS 0 while disconnected is dropped: nothing to wait for
            self._pending.sent(info.mid, message.qos)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every publish so far is acknowledged (QoS 1) or sent; False on timeout."""
        return self._pending.wait(timeout)

    def close(self, final: Publish | None = None, timeout: float = 5.0) -> None:
        """Optionally publish a last message (e.g. an explicit "offline"), then disconnect."""
        if self._client is None:
            return
        self._closing = True
        if final is not None and self.connected.is_set():
            self.publish(final)
        self.flush(timeout)
        self._stop_client(self._client)
        self._client = None
