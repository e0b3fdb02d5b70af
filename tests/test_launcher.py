"""The launcher against a real server: what a stop that fails says, and what it keeps."""

from __future__ import annotations

import socket
import time

import pytest
from support.scrape import wait_for
from support.servers import TIMEOUT, clean_environment

from echolab.catalogue import server
from echolab.launcher import LaunchError, ServerProcess


def test_a_stop_that_fails_says_what_the_server_was_doing_and_keeps_its_log() -> None:
    """A request whose blocking call holds the event loop for a minute, past a 0.2 s drain timeout."""
    flags = ["--delay-ms", "0", "--blocking-ms", "60000", "--drain-timeout", "0.2"]
    process = ServerProcess(server("async"), flags, env=clean_environment()).start()
    try:
        with socket.create_connection(process.address, timeout=TIMEOUT) as sock:
            sock.sendall(b"held\n")
            metrics = f"http://{process.host}:{process.metrics_port}/metrics"
            wait_for(metrics, lambda m: m.value("echo_requests_in_flight") == 1)
            process.send()
            deadline = time.monotonic() + TIMEOUT
            while "still stopping" not in process.log:
                assert time.monotonic() < deadline, process.log
                time.sleep(0.05)
            with pytest.raises(LaunchError) as failed:
                process.stop(timeout=0.5)
    finally:
        process.kill()
    said = str(failed.value).splitlines()[0]
    assert "did not exit within 0.5s of SIGTERM, killed" in said
    assert "it logged:" in said and "still stopping" in said and "event loop" in said
    assert said.endswith(f"its log: {process.log_path}")
    assert process.log_path.exists()
    process.log_path.unlink()
