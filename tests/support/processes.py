"""The processes a lab run started, as a test sees them from outside."""

from __future__ import annotations

import contextlib

import psutil


def descendants(pid: int) -> dict[psutil.Process, str]:
    """Every process under ``pid``, with its command line."""
    found = {}
    try:
        for process in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[process] = " ".join(process.cmdline())
    except psutil.Error:
        pass
    return found


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
