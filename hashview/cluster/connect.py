"""Reaching Ray for a cluster run: importing it, joining a cluster or starting a local one,
and checking that a local one can place the actors asked for."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from typing import Optional

from hashview.errors import HashViewError

# On a CPU an actor and a read task each reserve half a core: a forward pass and the reading
# of the next chunk share the cores, as they do in a single-process run.
CPU_SHARE = 0.5
# A local cluster keeps chunks of model inputs (10 MB each on a CPU) in a small object store.
LOCAL_OBJECT_STORE_BYTES = 256 << 20
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
CONNECT_S = 10  # a cluster address must accept a connection within this


def import_ray():
    try:
        import ray
    except ImportError:
        raise HashViewError(None, "the ray engine needs Ray: pip install 'hashview[cluster]'") \
            from None
    return ray


@contextlib.contextmanager
def connected(ray, address: Optional[str]):
    """Ray for this run: the one already initialised, a running cluster, or a local one (shut
    down again at the end)."""
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            with warnings.catch_warnings():  # Ray's own advice on a timeout: the line says it
                warnings.simplefilter("ignore")
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # the local Ray's notice that token authentication is on (it is) would be the
            # only line on stderr before the progress bar
            logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
        raise HashViewError(address or "local Ray", f"cannot start or join the Ray cluster "
                                                    f"({type(exc).__name__}: {exc})") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """One line at once for a cluster address nothing answers at (Ray itself retries for
    minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S):
            pass
    except ValueError:
        raise HashViewError(address, "not a Ray address (auto, HOST:PORT or ray://HOST:PORT)") \
            from None
    except OSError as exc:
        raise HashViewError(address, f"no Ray cluster answers there ({exc.strerror or exc})") \
            from None


def check_room(resources: dict, count: int, cpus: float, gpus: float) -> None:
    """Refuse (one line) actors that a local Ray cannot place beside one read task."""
    have_cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if count * cpus + CPU_SHARE > have_cpus:
        raise HashViewError(None, f"{count} workers need {count * cpus + CPU_SHARE:g} CPUs "
                                  f"with reading; the local Ray has {have_cpus:g}")
    if count * gpus > have_gpus:
        raise HashViewError(None, f"{count} workers need {count * gpus:g} GPUs; the local Ray "
                                  f"has {have_gpus:g}")
