"""The supervisors of one multi-process job watch each other, so survivors of a dead peer stop at once.

JAX's distributed runtime ends the survivors when a process dies (heartbeats, lost connections),
but only after seconds, and a survivor's background threads (an async checkpoint commit waiting on
its barrier) may fail noisily first. The supervisor processes (tools/supervise.py) are idle and
hold no GIL-heavy work, so they keep a plain TCP connection to each other: process 0's supervisor
listens on the coordinator's port + 1 and every other supervisor connects to it. A connection that
closes without a `done` line means that process is gone: the supervisor that sees it stops its own
work and reports the lost peer; process 0's supervisor then closes every connection, so the others
learn it at once too.

The channel only helps: if the port cannot be bound or reached, the job runs as before (JAX's own
detection), and the reason is written to the supervisor's log.
"""

from __future__ import annotations

import select
import socket
import time

CONNECT_SECONDS = 300  # as long as JAX waits for the job to assemble


class Liveness:
    """One supervisor's end of the channel; `poll()` is called often and says whether a peer is lost."""

    def __init__(self, coordinator: str, process_id: int, num_processes: int, log):
        self.process_id, self.num_processes, self.log = process_id, num_processes, log
        host, _, port = coordinator.rpartition(":")
        self.address = (host or "127.0.0.1", int(port) + 1)
        self.listener, self.peers, self.done = None, [], set()
        self.deadline = time.time() + CONNECT_SECONDS
        self.lost: str | None = None
        if process_id == 0:
            try:
                self.listener = socket.create_server(("", self.address[1]), reuse_port=False)
                self.listener.setblocking(False)
            except OSError as e:
                self._disable(f"cannot listen on port {self.address[1]} ({e.strerror})")

    def _disable(self, why: str) -> None:
        self.log(f"supervisor liveness channel off: {why}; JAX's own peer detection applies")
        self.deadline = 0
        self.listener = None

    def _connect(self) -> None:
        """A non-zero process: connect to process 0's supervisor (retrying until it listens)."""
        try:
            sock = socket.create_connection(self.address, timeout=1)
        except OSError:
            if time.time() > self.deadline:
                self._disable(f"process 0's supervisor never answered at {self.address[0]}:{self.address[1]}")
            return
        sock.setblocking(False)
        self.peers.append(sock)
        self.log(f"supervisor liveness channel: connected to process 0's at {self.address[0]}:{self.address[1]}")

    def poll(self, timeout: float = 0.5) -> str | None:
        """Wait up to `timeout` for news; the reason a peer is lost, or None."""
        if self.process_id != 0 and not self.peers and self.deadline:
            self._connect()
        readable = [s for s in [self.listener, *self.peers] if s is not None]
        if not readable:
            time.sleep(timeout)
            return self.lost
        for sock in select.select(readable, [], [], timeout)[0]:
            if sock is self.listener:
                try:
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    self.peers.append(conn)
                    self.log(f"supervisor liveness channel: {len(self.peers)} of {self.num_processes - 1} connected")
                except OSError:
                    pass
                continue
            try:
                data = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data.startswith(b"done"):
                self.done.add(sock)
            elif not data and sock not in self.done:
                self.lost = ("process 0 of the job is gone" if self.process_id
                             else "another process of the job is gone")
                self.log(f"supervisor liveness channel: {self.lost}")
            if not data:
                self.peers.remove(sock)
                sock.close()
        return self.lost

    def close(self, finished: bool) -> None:
        """End this side: `finished` says the work ended on its own (send `done`), not a lost peer."""
        for sock in self.peers:
            try:
                if finished:
                    sock.setblocking(True)
                    sock.sendall(b"done\n")
                sock.close()
            except OSError:
                pass
        self.peers = []
        if self.listener is not None:
            self.listener.close()
            self.listener = None
