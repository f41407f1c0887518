"""The sandboxes' CurveZMQ TCP socket (``STIGMER_SANDBOX_TRANSPORT=tcp``).

Sandbox agents then dial the broker over the container network instead of the mounted
``agents.sock``; each incarnation gets a key pair of its own, which ZAP accepts only until the
incarnation ends, and the agent endpoint checks every message against the kernel it claims.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import zmq

from ..config import Config
from ..errors import StigmerError
from ..provisioners import Provisioner
from ..provisioners.container import TCP_HOST
from .connections import AGENT_CAP_PER_KERNEL, AGENT_LIMITS

if TYPE_CHECKING:
    from pathlib import Path

    from .connections import ConnectionGuard
    from .remote import RemoteEndpoints

log = logging.getLogger("stigmer.broker")


def bind_sandbox_tcp(
    config: Config,
    runtime_path: Path,
    remote: RemoteEndpoints,
    connections: ConnectionGuard,
    sandbox: Provisioner | None,
) -> tuple[Any, str]:
    """(the socket, its address as containers see it), on the port a previous server of this
    runtime directory used if it is free (its containers come back to it after a crash)."""
    network = config.sandbox_network
    if network == "none" or network.startswith("container:"):
        raise StigmerError(
            f"STIGMER_SANDBOX_TRANSPORT=tcp needs a container network of its own, and "
            f"STIGMER_SANDBOX_NETWORK={network} gives the agent no way to the broker — use "
            "bridge (or a network name), or the ipc transport"
        )
    host, dial = sandbox_tcp_addresses(config.sandbox_agent_bind)
    port_file = runtime_path / "sandbox-agent.port"
    endpoints = [f"tcp://{host}:*"]
    with contextlib.suppress(OSError, ValueError):
        endpoints.insert(0, f"tcp://{host}:{int(port_file.read_text())}")
    for endpoint in endpoints:
        try:
            sock = remote.tcp_router(endpoint, curve=True, sandbox=True, limits=AGENT_LIMITS)
            break
        except StigmerError as exc:
            if not endpoint.endswith(":*"):
                log.warning(
                    "%s; sandbox containers of a previous server that used that port cannot "
                    "come back",
                    exc,
                )
            error = exc
    else:
        raise StigmerError(f"no socket for sandbox agents over tcp: {error}")
    connections.watch(sock, "sandbox TCP socket", AGENT_CAP_PER_KERNEL * config.max_kernels + 64)
    port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    port_file.write_text(str(port))
    log.info("sandbox agents reach this server at tcp://%s:%d (CurveZMQ)", host, port)
    if sandbox is not None:
        sandbox.set_tcp_host(dial)  # what TCP_HOST names inside containers
    return sock, f"tcp://{TCP_HOST}:{port}"


def sandbox_tcp_addresses(bind: str | None) -> tuple[str, str]:
    """(address the broker listens on for tcp sandbox agents, what ``host.docker.internal``
    maps to in their containers), or :class:`StigmerError` when no address fits."""
    import ipaddress
    import sys

    if bind:
        try:
            address = ipaddress.IPv4Address(bind)
        except ValueError:
            raise StigmerError(
                f"STIGMER_SANDBOX_AGENT_BIND={bind!r}: give an IPv4 address (containers reach "
                "the host by IPv4), e.g. 0.0.0.0 or docker0's address"
            ) from None
        if address.is_unspecified or address.is_loopback:
            return str(address), "host-gateway"  # the engine's own route to the host
        return str(address), str(address)
    bridge = bridge_address()
    if bridge is not None:
        return bridge, "host-gateway"  # host-gateway is docker0's address
    if sys.platform in ("darwin", "win32"):
        return "127.0.0.1", "host-gateway"  # Docker Desktop forwards host.docker.internal
    raise StigmerError(
        "STIGMER_SANDBOX_TRANSPORT=tcp: this host has no docker0 bridge to listen on — set "
        "STIGMER_SANDBOX_AGENT_BIND to an address your containers reach the host by"
    )


def bridge_address(interface: str = "docker0") -> str | None:
    """The IPv4 address of Docker's bridge on this host (what host-gateway names), if any."""
    import fcntl
    import socket
    import struct

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = struct.pack("256s", interface.encode()[:15])
        answer = fcntl.ioctl(probe.fileno(), 0x8915, packed)  # SIOCGIFADDR
        return socket.inet_ntoa(answer[20:24])
    except OSError:
        return None
    finally:
        probe.close()
