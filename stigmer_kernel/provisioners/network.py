"""The network sandboxes join: by default one of the server's own, cut off from the host.

``STIGMER_SANDBOX_NETWORK=isolated`` (the default) gives each server a user-defined bridge,
``stigmer-<server id>``, made before its first sandbox and removed when the server stops (or, if
the server died, by the next server's leftover check). Two things close it:

* Docker's ``enable_icc=false`` on that bridge: no traffic between its containers, so one
  sandbox cannot reach a service another one runs.
* Host firewall rules (iptables, root only) on the bridge's interface, ``stg-<id>``: a new
  connection from a sandbox to any address of the host itself (the bridge's gateway, docker0,
  eth0...) is rejected, but for the broker's port with ``STIGMER_SANDBOX_TRANSPORT=tcp``. Replies
  to connections the host made stay allowed. Traffic that leaves the host (package mirrors, the
  internet) is forwarded, not delivered to the host, and these rules do not see it; Docker's
  own isolation rules already drop forwarding between its bridges.

Every rule carries an iptables comment naming its network and the network's id, so removal
deletes exactly the rules stigmer added for a network that is gone, and nothing else. A server
that is not root cannot add them: it logs one warning, the kernel's info says why
(``host_firewall``), and sandboxes can still reach services bound on the host's addresses.

``bridge``, ``none`` or the name of any Docker network are used as they are (today's behaviour
for ``bridge``: sandboxes reach each other and the host).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import StigmerError

log = logging.getLogger("stigmer.sandbox")

#: STIGMER_SANDBOX_NETWORK's value for a network of the server's own (the default).
ISOLATED = "isolated"
NETWORK_PREFIX = "stigmer-"
#: The bridge interface: Linux allows 15 characters, so "stg-" and 11 hex digits of the id.
BRIDGE_PREFIX = "stg-"
BRIDGE_NAME_MAX = 15
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
#: Every rule's comment starts so; then the network's name and the first 12 digits of its id.
RULE_TAG = "stigmer:"
#: The chain of packets addressed to the host itself.
CHAIN = "INPUT"
#: Seconds one iptables call may take (it waits up to IPTABLES_LOCK_WAIT for the xtables lock).
IPTABLES_TIMEOUT = 15
IPTABLES_LOCK_WAIT = "5"


class NetworkError(StigmerError):
    """The sandbox network cannot be made ready."""


def network_name(server: str) -> str:
    return NETWORK_PREFIX + server


def bridge_name(server: str) -> str:
    return (BRIDGE_PREFIX + server)[:BRIDGE_NAME_MAX]


class HostFirewall:
    """The host's INPUT rules of one sandbox network's bridge interface."""

    def __init__(self, network: str, network_id: str, bridge: str) -> None:
        self.bridge = bridge
        self.tag = f"{RULE_TAG}{network}:{network_id[:12]}"

    def specs(self, tcp_port: int | None) -> list[list[str]]:
        """The rules, first match first: the broker's tcp port (if any), then the rejection of
        every other new connection to the host (REJECT, so a refused connect fails at once)."""
        mark = ["-m", "comment", "--comment", self.tag]
        reject = ["-i", self.bridge, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"]
        rules = [[*reject, *mark, "-j", "REJECT"]]
        if tcp_port is not None:
            rules.insert(0, ["-i", self.bridge, "-p", "tcp", "--dport", str(tcp_port), *mark,
                             "-j", "ACCEPT"])  # fmt: skip
        return rules

    def apply(self, tcp_port: int | None) -> None:
        """Add the rules that are missing, on top of INPUT and in order; drop this network's
        rules for another port. Raises :class:`NetworkError`."""
        wanted = self.specs(tcp_port)
        for spec in reversed(wanted):  # each inserted at the top: the last one first
            if iptables("-C", CHAIN, *spec, check=False).returncode != 0:
                iptables("-I", CHAIN, "1", *spec)
        for rule in tagged_rules(self.tag):
            port = rule[rule.index("--dport") + 1] if "--dport" in rule[:-1] else None
            if port is not None and port != str(tcp_port):
                delete_rule(rule)  # a previous server's port: stale

    def remove(self) -> int:
        """Delete every rule of this network (once the network is gone)."""
        return sum(delete_rule(rule) for rule in tagged_rules(self.tag))


def firewall_unavailable() -> str | None:
    """Why this process cannot add host firewall rules, or None if it can."""
    if os.geteuid() != 0:
        return "the server is not root, so it cannot add host firewall rules"
    if _iptables_path() is None:
        return "no iptables command on this host"
    return None


def _iptables_path() -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("iptables", path=path)


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run iptables (the one Docker uses: the first on PATH) with ``args``."""
    command = _iptables_path()
    if command is None:
        raise NetworkError("no iptables command on this host")
    try:
        done = subprocess.run(
            [command, "-w", IPTABLES_LOCK_WAIT, *args],
            capture_output=True,
            text=True,
            timeout=IPTABLES_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"iptables {' '.join(args[:2])} failed: {exc}") from None
    if check and done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x and not x.startswith("#")]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise NetworkError(f"iptables {' '.join(args[:2])} failed: {detail}")
    return done


def tagged_rules(prefix: str = RULE_TAG) -> list[list[str]]:
    """INPUT's rules whose comment starts with ``prefix``, as ``iptables -S`` spells them."""
    listed = iptables("-S", CHAIN).stdout
    rules = []
    for line in listed.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[:2] == ["-A", CHAIN] and _comment(words).startswith(prefix):
            rules.append(words[2:])
    return rules


def _comment(words: list[str]) -> str:
    return words[words.index("--comment") + 1] if "--comment" in words[:-1] else ""


def delete_rule(rule: list[str]) -> int:
    """Delete one rule as listed (1), or 0 if it went meanwhile."""
    return 1 if iptables("-D", CHAIN, *rule, check=False).returncode == 0 else 0


def rule_owner(rule: list[str]) -> tuple[str, str] | None:
    """(network name, first 12 digits of its id) of a tagged rule."""
    tag = _comment(rule)
    parts = tag[len(RULE_TAG) :].rsplit(":", 1) if tag.startswith(RULE_TAG) else []
    return (parts[0], parts[1]) if len(parts) == 2 else None


class SandboxNetwork:
    """The network of a server's sandbox containers, as ``STIGMER_SANDBOX_NETWORK`` says.

    Its methods make Docker and iptables calls: call them on the provisioner's thread pool (or
    at shutdown), never on the event loop.
    """

    def __init__(
        self, client: Callable[[], Any], server: str, labels: Mapping[str, str], setting: str
    ) -> None:
        self.client = client
        self.isolated = setting == ISOLATED
        self.name = network_name(server) if self.isolated else setting
        self.bridge = bridge_name(server)
        self.labels = dict(labels)
        self.firewall_off: str | None = None  # why the host is not firewalled (isolated only)
        self._lock = threading.Lock()
        self._ready: tuple[str, int | None] | None = None  # (network id, port) rules were made for
        self._warned = False

    def mode(self, tcp_port: int | None) -> str:
        """The ``network_mode`` of a new container; the isolated network is made (again, if it
        was removed meanwhile) with its firewall rules, ``tcp_port`` let through, first."""
        if not self.isolated:
            return self.name
        with self._lock:
            network_id = self._existing_id() or self._create()
            if self._ready != (network_id, tcp_port):
                self._firewall(network_id, tcp_port)
                self._ready = (network_id, tcp_port)
        return self.name

    def describe(self) -> dict[str, Any]:
        """What a kernel's info says of its network."""
        info: dict[str, Any] = {"network": self.name}
        if self.isolated:
            info["host_firewall"] = "on" if self.firewall_off is None else self.firewall_off
        return info

    def _existing_id(self) -> str | None:
        import docker.errors

        try:
            attrs = self.client().api.inspect_network(self.name)
        except docker.errors.NotFound:
            return None
        labels = attrs.get("Labels") or {}
        options = attrs.get("Options") or {}
        if any(labels.get(k) != v for k, v in self.labels.items()) or (
            options.get(OPT_ICC) != "false"
        ):
            raise NetworkError(
                f"a Docker network named {self.name} exists that this server did not make — "
                f"remove it (docker network rm {self.name}) or set STIGMER_SANDBOX_NETWORK"
            )
        return str(attrs["Id"])

    def _create(self) -> str:
        import docker.errors

        try:
            network = self.client().networks.create(
                self.name,
                driver="bridge",
                options={OPT_ICC: "false", OPT_BRIDGE_NAME: self.bridge},
                labels=self.labels,
                check_duplicate=True,
            )
        except docker.errors.APIError as exc:
            detail = str(exc.explanation or exc).strip()
            raise NetworkError(
                f"cannot create the sandbox network {self.name}: {detail} — free an address "
                "pool (docker network prune) or set STIGMER_SANDBOX_NETWORK=bridge"
            ) from None
        log.info("sandbox network %s (bridge %s) created", self.name, self.bridge)
        return str(network.id)

    def _firewall(self, network_id: str, tcp_port: int | None) -> None:
        why = firewall_unavailable()
        if why is None:
            try:
                HostFirewall(self.name, network_id, self.bridge).apply(tcp_port)
                for rule in tagged_rules(f"{RULE_TAG}{self.name}:"):
                    if rule_owner(rule) != (self.name, network_id[:12]):
                        delete_rule(rule)  # an earlier network of this name's, now gone
            except NetworkError as exc:
                why = str(exc)
        self.firewall_off = None if why is None else f"off: {why}"
        if why is not None and not self._warned:
            self._warned = True
            log.warning(
                "sandbox network %s: %s; its sandboxes can reach services bound on this host's "
                "addresses — run the server as root, or add the rules yourself "
                "(docs/sandbox/local-setup.md, Networking)",
                self.name,
                why,
            )

    def close(self) -> None:
        """Remove the isolated network and its rules (at server stop, once its containers are
        gone); a network some container still uses stays, rules and all."""
        if not self.isolated:
            return
        with self._lock:
            self._ready = None
            remove_unused(self.client(), self.name)


def remove_unused(client: Any, name: str) -> bool:
    """Remove network ``name`` if no container (running or stopped) uses it, then its rules.

    True if it is gone. A stopped container would not start again without its network.
    """
    import docker.errors

    try:
        network = client.networks.get(name)
        if client.containers.list(all=True, ignore_removed=True, filters={"network": network.id}):
            log.info("sandbox network %s kept: a container still uses it", name)
            return False
        network.remove()
    except docker.errors.NotFound:
        pass
    except Exception as exc:
        log.warning("could not remove the sandbox network %s: %s", name, exc)
        return False
    if firewall_unavailable() is None:
        try:
            for rule in tagged_rules(f"{RULE_TAG}{name}:"):
                delete_rule(rule)
        except NetworkError as exc:
            log.warning("could not remove the firewall rules of %s: %s", name, exc)
    return True


def reap_networks(client: Any, label: str, dead: Callable[[Mapping[str, str]], bool]) -> int:
    """Remove the networks labelled ``label`` whose server is ``dead`` (by their labels) and no
    container uses, and (as root) every stigmer rule whose network is gone."""
    removed = 0
    orphans: list[list[str]] = []
    if firewall_unavailable() is None:
        try:
            orphans = tagged_rules()  # listed before the networks: a rule's network is older
        except NetworkError as exc:
            log.info("no leftover firewall rule check: %s", exc)
    networks = client.networks.list(filters={"label": label})
    for network in networks:
        if dead(network.attrs.get("Labels") or {}) and remove_unused(client, network.name):
            removed += 1
    present = {(n.name, str(n.id)[:12]) for n in client.networks.list(filters={"label": label})}
    for rule in orphans:
        owner = rule_owner(rule)
        if owner is not None and owner not in present:
            delete_rule(rule)
    if removed:
        log.info("removed %d leftover sandbox network(s) of stopped servers", removed)
    return removed
