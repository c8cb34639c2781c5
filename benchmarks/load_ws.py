"""A small blocking WebSocket client for locust's gevent users (``benchmarks/locustfile.py``).

It drives the ``websockets`` package's sans-I/O protocol over one plain socket, with no
threads. ``websockets.sync.client`` runs a reader thread per connection; under gevent's
monkey patching that thread is a greenlet, and a socket closed while it waits aborts the
whole locust process (libev: "I/O watcher with invalid fd found in epoll_ctl").
"""

from __future__ import annotations

import socket
import time
from collections import deque

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri


class BlockingWebSocket:
    """One client connection: ``recv(timeout)`` returns the next text message."""

    def __init__(self, url: str, subprotocols: list[str], timeout: float) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, subprotocols=[Subprotocol(s) for s in subprotocols])
        self.subprotocol: str | None = None
        self._messages: deque[str] = deque()
        self._fragments: list[bytes] = []
        self._sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        try:
            self.protocol.send_request(self.protocol.connect())
            self._flush()
            deadline = time.monotonic() + timeout
            while self.protocol.state is State.CONNECTING:
                self._pump(deadline - time.monotonic())
            if self.protocol.handshake_exc is not None:
                raise self.protocol.handshake_exc
            if self.protocol.state is not State.OPEN:
                raise InvalidHandshake("the connection closed during the handshake")
        except BaseException:
            self._sock.close()
            raise

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self._sock.sendall(data)
            else:  # the protocol asks to half-close after a close frame
                self._sock.shutdown(socket.SHUT_WR)

    def _pump(self, timeout: float) -> None:
        """Read once (at most ``timeout`` s); queue the text messages; answer pings/closes."""
        if timeout <= 0:
            raise TimeoutError("no data from the server in time")
        self._sock.settimeout(timeout)
        data = self._sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.subprotocol = event.headers.get("Sec-WebSocket-Protocol")
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.CONT):
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self._messages.append(b"".join(self._fragments).decode())
                    self._fragments.clear()
        self._flush()  # pongs to the server's pings, the answer to its close

    def recv(self, timeout: float) -> str:
        """The next text message; ``TimeoutError`` after ``timeout`` s, ``ConnectionClosed``
        when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while not self._messages:
            if self.protocol.state is State.CLOSED:
                raise self.protocol.close_exc
            self._pump(deadline - time.monotonic())
        return self._messages.popleft()

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def close(self) -> None:
        """Send a normal close (1000) and close the socket without waiting for the answer."""
        try:
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(1000)
                self._flush()
        except (OSError, ConnectionClosed):
            pass
        finally:
            self._sock.close()
