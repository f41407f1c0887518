"""The names configuration is read under: where commands run (:class:`ExecutionMode`) and every
environment variable stigmer-kernel reads (:class:`EnvVar`).

Their own module, re-exported by :mod:`stigmer_kernel.config`, so that code which needs a name but
no :class:`~stigmer_kernel.config.Config` (an agent's start, the environment checks) does not
import the config module and its dataclass machinery.
"""

from __future__ import annotations

import enum


class ExecutionMode(str, enum.Enum):
    """Where commands run."""

    LOCAL = "local"
    SANDBOX = "sandbox"
    AUTO = "auto"


class EnvVar(str, enum.Enum):
    """Every environment variable stigmer-kernel reads."""

    CONFIG = "STIGMER_CONFIG"
    RUNTIME_DIR = "STIGMER_RUNTIME_DIR"
    EXECUTION_MODE = "STIGMER_EXECUTION_MODE"
    KERNEL_TTL = "STIGMER_KERNEL_TTL"
    HEARTBEAT_INTERVAL = "STIGMER_HEARTBEAT_INTERVAL"
    HEARTBEAT_MISSES = "STIGMER_HEARTBEAT_MISSES"
    TIMEOUT = "STIGMER_TIMEOUT"
    OUTPUT_LIMIT = "STIGMER_OUTPUT_LIMIT"
    PROCESS_JOURNAL_BYTES = "STIGMER_PROCESS_JOURNAL_BYTES"
    EXPIRE_WITH_PROCESSES = "STIGMER_EXPIRE_WITH_PROCESSES"
    WORKDIR = "STIGMER_WORKDIR"
    CLIENT_ENDPOINT = "STIGMER_CLIENT_ENDPOINT"
    AGENT_ENDPOINT = "STIGMER_AGENT_ENDPOINT"
    LOG_LEVEL = "STIGMER_LOG_LEVEL"
    SHELL = "STIGMER_SHELL"
    SANDBOX_IMAGE = "STIGMER_SANDBOX_IMAGE"
    SANDBOX_AUTO_PULL = "STIGMER_SANDBOX_AUTO_PULL"
    SANDBOX_CLEANUP = "STIGMER_SANDBOX_CLEANUP"
    SANDBOX_TTL = "STIGMER_SANDBOX_TTL"
    SANDBOX_NETWORK = "STIGMER_SANDBOX_NETWORK"
    SANDBOX_TRANSPORT = "STIGMER_SANDBOX_TRANSPORT"
    SANDBOX_AGENT_BIND = "STIGMER_SANDBOX_AGENT_BIND"
    SANDBOX_MEMORY = "STIGMER_SANDBOX_MEMORY"
    SANDBOX_CPUS = "STIGMER_SANDBOX_CPUS"
    SANDBOX_PIDS = "STIGMER_SANDBOX_PIDS"
    SANDBOX_READ_ONLY = "STIGMER_SANDBOX_READ_ONLY"
    SANDBOX_USER = "STIGMER_SANDBOX_USER"
    SANDBOX_TMPFS_SIZE = "STIGMER_SANDBOX_TMPFS_SIZE"
    SANDBOX_DISK = "STIGMER_SANDBOX_DISK"
    SANDBOX_WORKSPACE = "STIGMER_SANDBOX_WORKSPACE"
    SANDBOX_WARM = "STIGMER_SANDBOX_WARM"
    SANDBOX_CA_FILE = "STIGMER_SANDBOX_CA_FILE"
    SANDBOX_POOL = "STIGMER_SANDBOX_POOL"
    POOL_WAIT = "STIGMER_POOL_WAIT"
    # Read by a pool member (``stigmer agent join --pool``) when no key file is given: the
    # z85 keys, as Swarm and Kubernetes secrets hand them over.
    POOL_SERVER_KEY = "STIGMER_POOL_SERVER_KEY"
    POOL_CURVE_SECRET = "STIGMER_POOL_CURVE_SECRET"
    AUTO_LOCAL_FALLBACK = "STIGMER_AUTO_LOCAL_FALLBACK"
    AUTO_STICKY = "STIGMER_AUTO_STICKY"
    ALLOW_PLAIN_TCP = "STIGMER_ALLOW_PLAIN_TCP"
    MAX_KERNELS = "STIGMER_MAX_KERNELS"
    BROKER_MEMORY_MB = "STIGMER_BROKER_MEMORY_MB"
    MAX_KERNELS_PER_CLIENT = "STIGMER_MAX_KERNELS_PER_CLIENT"
    # Set by the broker for the agents it spawns; never read from user config.
    AGENT_KEY = "STIGMER_AGENT_KEY"
    # Set by the broker in a local kernel's shell (its name); never read.
    KERNEL = "STIGMER_KERNEL"


__all__ = ["EnvVar", "ExecutionMode"]
