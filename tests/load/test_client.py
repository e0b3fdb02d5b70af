"""EchoClient's reading, against a scripted server: replies split across reads, or sharing one."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from echolab.load.client import ClosedEarly, EchoClient, WrongReply, failure_kind

Script = list[list[bytes]]


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], EchoClient]]:
    """``scripted(steps)``: a lines client of a one-connection server that, for the i-th request
    line it reads, sends the chunks of ``steps[i]`` one by one, then closes after the last step."""
    listener = socket.create_server(("127.0.0.1", 0))
    threads: list[threading.Thread] = []

    def serve(steps: Script) -> None:
        conn, _ = listener.accept()
        with conn:
            buffer = b""
            for chunks in steps:
                while b"\n" not in buffer:
                    buffer += conn.recv(65536)
                buffer = buffer.partition(b"\n")[2]
                for chunk in chunks:
                    conn.sendall(chunk)
                    time.sleep(0.01)  # usually a read of its own on the client: not needed to pass

    def start(steps: Script) -> EchoClient:
        threads.append(threading.Thread(target=serve, args=(steps,), daemon=True))
        threads[-1].start()
        host, port = listener.getsockname()[:2]
        return EchoClient(host, port, "lines", timeout=10)

    yield start
    for thread in threads:
        thread.join(10)
    listener.close()


def test_replies_split_across_reads_or_sharing_one(scripted: Callable[[Script], EchoClient]) -> None:
    with scripted([[b"AB", b"C\n"], [b"DEF\nGHI", b"\n"], [], []]) as client:
        assert client.request(b"abc") == b"ABC\n"
        assert client.request(b"def") == b"DEF\n"
        assert client.request(b"ghi") == b"GHI\n"  # arrived with the reply before
        with pytest.raises(ClosedEarly) as closed:
            client.request(b"jkl")  # the server reads it and closes without a reply
    assert failure_kind(closed.value) == "closed"


def test_a_wrong_reply_drops_the_connection_and_the_next_request_reconnects(
    scripted: Callable[[Script], EchoClient],
) -> None:
    with scripted([[b"ABD\n"]]) as client:
        with pytest.raises(WrongReply) as wrong:
            client.request(b"abc")
        assert failure_kind(wrong.value) == "wrong_reply"
        assert client._sock is None


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ],
    ids=["no-route", "no-network", "no-name"],
)
def test_a_server_out_of_reach_is_unreachable(error: OSError) -> None:
    assert failure_kind(error) == "unreachable"


def test_a_client_resolves_again_after_a_failed_connect(refused_port: int) -> None:
    """A server restarted at another address (a container's) is found again by name."""
    client = EchoClient("localhost", refused_port, connect_timeout=1)  # nothing listens there
    with pytest.raises(OSError):
        client.request(b"x")
    assert client._addresses is None
