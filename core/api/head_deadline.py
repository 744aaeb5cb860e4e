"""A deadline for the request head: uvicorn's h11 protocol, closing a connection that has not sent a complete request
line and headers within :data:`HEAD_TIMEOUT_S` of connecting (or of its previous answer, on a kept-alive connection).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and :class:`core.api.limits.BodyLimit` cuts
stalled bodies, but a client that trickles a request head byte by byte (slowloris) cancels the keep-alive timer with
its first byte and then holds the connection for as long as it likes. ``python -m core serve`` runs with this
protocol class, so a server on its own (no proxy in front) does not hand its connection slots to such clients.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0  # seconds a connection may take to send a complete request head (UUSIC_HEAD_TIMEOUT_S)


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module)."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeadDeadlineH11Protocol]:
        """This protocol with a head deadline of ``seconds`` (the setting ``head_timeout_s``)."""
        return type(cls.__name__, (cls,), {"head_timeout_s": float(seconds)})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # the next request on this connection has its own deadline

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.logger.info("closed a connection that sent no complete request head in %g s", self.head_timeout_s)
            self.transport.close()
