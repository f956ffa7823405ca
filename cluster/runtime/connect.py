"""Joining a Ray cluster for the live runtime: address forms, reachability, one-paragraph errors.

``connect(address)`` starts an embedded local Ray (no address; or joins RAY_ADDRESS, as inside a
Ray Job), or joins ``auto``, ``ray://HEAD:10001`` (Ray Client) or ``HEAD:6379`` (the GCS). An
``http://HEAD:8265`` Jobs address is refused with the ``ray job submit`` command to use instead.
``remote`` is the one place ``ray.remote`` is applied to an actor shell.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlparse


class RuntimeInputError(Exception):
    """The live runtime cannot run here (address, cluster, actors). One paragraph for a person."""


def remote(cls: type, **options: Any):
    """The one place ``ray.remote`` is applied to an actor shell."""
    import ray

    return ray.remote(**options)(cls)


def say(text: str) -> None:
    """One line for the person at the terminal (stderr)."""
    print(text, file=sys.stderr, flush=True)


def last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]



# --- joining a cluster -------------------------------------------------------------------------------

JOBS_HINT = (
    "{addr} is the Ray dashboard / Jobs API address; a driver cannot join a cluster through it. "
    "Submit the run as a Ray Job instead: `ray job submit --address {addr} --working-dir . -- "
    "ats-stress run SCENARIO --runtime ray` (inside a job, ats-stress joins the cluster by itself), "
    "or join directly with --address ray://HEAD:10001 (Ray Client) or --address HEAD:6379 (the GCS "
    "address, from a machine of the cluster), or --address auto on a cluster node."
)


def _tcp_check(host: str, port: int, what: str, address: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=3.0):
            pass
    except OSError as exc:
        raise RuntimeInputError(
            f"--address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); no {what} "
            "is reachable there. Check that the cluster is up (`ray status` on the head node) and the "
            "host and port, or leave --address out to run on an embedded local Ray.") from None


def _split_host_port(hostport: str, address: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, ""
    if not port:
        if default_port is None:
            raise RuntimeInputError(
                f"--address {address}: give host:port (for example 10.0.0.1:6379), ray://host:10001, "
                "auto, or leave --address out to run on an embedded local Ray.")
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise RuntimeInputError(
            f"--address {address}: not a valid address. Use auto (the cluster this machine belongs to), "
            "ray://HEAD:10001 (Ray Client), HEAD:6379 (GCS), or leave --address out for an embedded local Ray.")
    return host.strip("[]"), int(port)


#: where Ray warns "Token authentication is enabled for this Ray cluster" when it starts a local one
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join or start Ray. Returns True when this call started the connection (the caller shuts it
    down), False when Ray was already initialised (tests, embedding)."""
    import ray

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    a = None if address is None else address.strip()
    if a == "":
        raise RuntimeInputError("--address is empty: give auto, ray://HEAD:10001, HEAD:6379, or leave it out "
                                "for an embedded local Ray.")
    if a is not None:
        low = a.lower()
        if low.startswith(("http://", "https://")):
            raise RuntimeInputError(JOBS_HINT.format(addr=a))
        if low == "auto":
            pass
        elif low.startswith("ray://"):
            host, port = _split_host_port(a[len("ray://"):].rstrip("/"), a, 10001)
            _tcp_check(host, port, "Ray Client server", a)
        elif "://" in a:
            raise RuntimeInputError(
                f"--address {a}: unknown scheme {urlparse(a).scheme!r}. Use auto, ray://HEAD:10001 "
                "(Ray Client), HEAD:6379 (GCS), or http://HEAD:8265 with `ray job submit`.")
        else:
            host, port = _split_host_port(a, a, None)
            _tcp_check(host, port, "Ray GCS", a)
    if ray.is_initialized():  # already connected (tests, embedding): use it as it is
        return False
    try:
        old = signal.getsignal(signal.SIGTERM)
    except ValueError:
        old = None
    try:
        if a is None and not os.environ.get("RAY_ADDRESS"):
            # an embedded cluster of our own, on this machine only: Ray turns token authentication
            # on (its default for a new local cluster) and says so on every run; not to be printed
            logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=num_cpus or max(2, os.cpu_count() or 2),
                     include_dashboard=False, object_store_memory=256 * 1024 * 1024, **kwargs)
        else:  # an address, or RAY_ADDRESS set (inside a Ray Job, ray.init() joins the job's cluster)
            ray.init(address=a, **kwargs)
    except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError from ray.init
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"--address {a}" if a else ("RAY_ADDRESS=" + os.environ["RAY_ADDRESS"] if os.environ.get("RAY_ADDRESS")
                                           else "the embedded local Ray")
        raise RuntimeInputError(
            f"{where}: could not start or join Ray ({first}). Check that the cluster is up and reachable "
            "(`ray status`), that its Ray and Python versions match this machine's, or leave --address "
            "out to run on an embedded local Ray.") from None
    finally:
        if old is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)  # ray.init replaces it; the CLI's turns SIGTERM into Ctrl-C
    return True
