"""Helpers for tests that run real node processes on 127.0.0.1 (every loop bounded, every process stopped)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from node import devnet as dn


@contextlib.contextmanager
def running_devnet(directory: Path, verifiers: int = 4, provers: int = 1, cheaters: int = 0,
                   **kwargs: Any) -> Iterator[dn.Devnet]:
    net = dn.create(directory, verifiers, provers, cheaters, **kwargs)
    try:
        for node in net.nodes:
            dn.start_node(net, node)
        dn.wait_ready(net, net.nodes, time.monotonic() + 90)
        yield net
    finally:
        dn.stop_all(net)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:  # node restarting or not yet serving
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error {last_exc!r})")


def claims(node: dn.NodeSpec) -> list[dict[str, Any]]:
    return list(dn.http_get(node, "/claims")["claims"])
