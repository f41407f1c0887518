"""The deployment files under deploy/: checked offline, as no cluster and no swarm run here.

Every Kubernetes manifest is validated against the Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelt field fails), and the hardening a pod must keep is checked field
by field, so removing ``runAsNonRoot`` or the capability drop fails here. The Swarm stack is
checked as YAML with the keys the pool needs, and by ``docker stack config`` (the Docker CLI's own
schema, no engine needed) where the CLI is installed.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
STACK = ROOT / "deploy" / "swarm" / "stack.yml"
#: Recent releases; strict schemas reject fields a release does not know.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
#: Not Kubernetes objects (no schema): checked on their own below.
NOT_OBJECTS = {"kustomization.yaml"}
#: Applied by hand with real keys (their comments say how); apply -k must not reset them.
SECRETS = {"pool-secret.yaml", "broker-secret.yaml"}
POOL_SECRET_KEYS = {"STIGMER_POOL_SERVER_KEY", "STIGMER_POOL_CURVE_SECRET"}


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name not in NOT_OBJECTS)


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


DOCUMENTS = dict(_documents())


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in DOCUMENTS.values() if doc["kind"] == kind}


def test_the_manifests_are_there() -> None:
    kinds = sorted(doc["kind"] for doc in DOCUMENTS.values())
    assert kinds == sorted(
        ["Namespace", "Secret", "Secret", "Deployment", "Deployment", "Service"]
        + ["NetworkPolicy"] * 2
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_each_manifest_validates_strictly(name: str, version: str) -> None:
    try:
        kubernetes_validate.validate(DOCUMENTS[name], version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        caught = exc.caught
        where = "/".join(str(p) for p in getattr(caught, "absolute_path", []))
        pytest.fail(f"{name} is not valid Kubernetes {version} at {where}: {caught.message}")


def test_strict_validation_refuses_a_misspelt_field() -> None:
    pool = copy.deepcopy(_objects("Deployment")["stigmer-pool-default"])
    pool["spec"]["template"]["spec"]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonRot"):
        kubernetes_validate.validate(pool, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secrets() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "stigmer"
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in _manifest_files()} - SECRETS
    assert {i["name"] for i in kustomization["images"]} == {"stigmer-pool"}


def test_kustomize_renders_valid_objects_in_the_namespace() -> None:
    # kubectl's own kustomize, offline (no cluster is asked).
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("the kustomize check needs kubectl in CI")
        pytest.skip("no kubectl")
    env = {**os.environ, "KUBECONFIG": os.devnull}
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(objects) == len(DOCUMENTS) - 2  # all but the two Secrets
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "stigmer", obj["metadata"]["name"]


def test_the_namespace_enforces_the_restricted_pod_security_profile() -> None:
    (namespace,) = _objects("Namespace").values()
    assert namespace["metadata"]["name"] == "stigmer"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- hardening ------------------------------------------------------------------------------------
def hardening_problems(deployment: dict[str, Any]) -> list[str]:
    """What a Deployment's pods lack of a Docker sandbox's hardening (container.py)."""
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false")
    if pod.get("restartPolicy", "Always") != "Always":
        problems.append("restartPolicy is not Always")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("a host namespace is shared")
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod: runAsNonRoot is not true")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod: seccompProfile is not RuntimeDefault")
    writable = {
        v["name"]
        for v in pod.get("volumes", [])
        if "emptyDir" in v and v["emptyDir"].get("sizeLimit")
    }
    for container in pod.get("initContainers", []) + pod["containers"]:
        name = container["name"]
        sc = container.get("securityContext") or {}
        for field in ("runAsNonRoot", "runAsUser"):
            value = sc.get(field, pod_sc.get(field))
            if field == "runAsNonRoot" and value is not True:
                problems.append(f"{name}: runAsNonRoot is not true")
            if field == "runAsUser" and not (isinstance(value, int) and value > 0):
                problems.append(f"{name}: no fixed non-root runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = sc.get("capabilities") or {}
        if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
            problems.append(f"{name}: capabilities are not drop ALL, add none")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(kind) or {})
            if missing:
                problems.append(f"{name}: no {kind} for {', '.join(sorted(missing))}")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if mounts.get("/tmp") not in writable:
            problems.append(f"{name}: /tmp is not an emptyDir of a set size")
        workdir = container.get("workingDir")
        if workdir and mounts.get(workdir) not in writable:
            problems.append(f"{name}: its workingDir {workdir} is not an emptyDir of a set size")
    return problems


@pytest.mark.parametrize("name", ["stigmer-pool-default", "stigmer-broker"])
def test_pods_are_hardened(name: str) -> None:
    assert hardening_problems(_objects("Deployment")[name]) == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (("securityContext", "runAsNonRoot"), "pod: runAsNonRoot is not true"),
        (("containers", 0, "securityContext", "runAsNonRoot"), "agent: runAsNonRoot"),
        (("containers", 0, "securityContext", "capabilities"), "agent: capabilities"),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), "agent: allowPriv"),
        (("containers", 0, "securityContext", "readOnlyRootFilesystem"), "agent: readOnlyRoot"),
        (("containers", 0, "resources"), "agent: no limits"),
        (("automountServiceAccountToken",), "automountServiceAccountToken"),
        (("volumes", 0, "emptyDir", "sizeLimit"), "agent: /tmp"),
    ],
)
def test_removing_a_hardening_field_is_seen(path: tuple[str | int, ...], problem: str) -> None:
    pool = copy.deepcopy(_objects("Deployment")["stigmer-pool-default"])
    parent: Any = pool["spec"]["template"]["spec"]
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    problems = hardening_problems(pool)
    if path[:2] == ("containers", 0) and path[-1] == "runAsNonRoot":
        assert problems == []  # the pod's own runAsNonRoot still applies ...
        del pool["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
        problems = hardening_problems(pool)  # ... and without both, it is seen
    assert any(p.startswith(problem) for p in problems), problems


# -- the pool and the broker agree -----------------------------------------------------------------
def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _port(endpoint: str) -> int:
    port = urlsplit(endpoint).port
    assert port is not None, endpoint
    return port


def test_pool_members_join_the_broker_with_the_pools_secret() -> None:
    pool = _objects("Deployment")["stigmer-pool-default"]
    (agent,) = pool["spec"]["template"]["spec"]["containers"]
    command = " ".join(agent["command"])
    assert "exec stigmer agent join --pool default --server" in command
    assert command.rstrip().endswith("--sandbox")  # the agent's seccomp filter, no_new_privs
    # A restarted container keeps its pod's emptyDirs: they are emptied before it joins again.
    scratch = {m["mountPath"] for m in agent["volumeMounts"]}
    assert command.index("find $scratch -mindepth 1 -delete") < command.index("exec stigmer")
    assert set(command.split('scratch="')[1].split('"')[0].split()) == scratch
    env = _env(agent)
    secret = _objects("Secret")["stigmer-pool-default"]
    assert set(secret["stringData"]) == POOL_SECRET_KEYS
    for key in POOL_SECRET_KEYS:
        assert env[key] == {"secretKeyRef": {"name": "stigmer-pool-default", "key": key}}
    # The member dials the Service's agent port, which is the broker's agent endpoint.
    server = urlsplit(env["STIGMER_POOL_SERVER"])
    service = _objects("Service")["stigmer-broker"]
    assert server.hostname == "stigmer-broker.stigmer.svc.cluster.local"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service["spec"]["type"] == "ClusterIP"
    assert server.port == ports["agents"]["port"]
    (broker,) = _objects("Deployment")["stigmer-broker"]["spec"]["template"]["spec"]["containers"]
    broker_env = _env(broker)
    assert _port(broker_env["STIGMER_AGENT_ENDPOINT"]) == server.port
    assert _port(broker_env["STIGMER_CLIENT_ENDPOINT"]) == ports["clients"]["port"]
    broker_selector = _objects("Deployment")["stigmer-broker"]["spec"]["selector"]
    assert service["spec"]["selector"] == broker_selector["matchLabels"]


def test_pool_members_reach_only_the_broker_dns_and_registries() -> None:
    policy = _objects("NetworkPolicy")["stigmer-pool-members"]["spec"]
    pool = _objects("Deployment")["stigmer-pool-default"]
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= pool["spec"]["template"]["metadata"]["labels"].items()
    )
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == []  # members dial out; nothing reaches them
    (agent,) = pool["spec"]["template"]["spec"]["containers"]
    broker_port = urlsplit(_env(agent)["STIGMER_POOL_SERVER"]).port
    allowed = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports lets everything out"
        assert rule.get("to"), "an egress rule without peers lets every address in"
        for peer in rule["to"]:
            if "ipBlock" in peer:  # the package registries: public addresses only
                assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(peer["ipBlock"]["except"])
        allowed |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert allowed == {("TCP", broker_port), ("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 80)}


def test_secrets_hold_placeholders_not_keys() -> None:
    for secret in _objects("Secret").values():
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE-"), "a key was committed"


# -- Docker Swarm ----------------------------------------------------------------------------------
def test_the_swarm_stack_has_what_a_pool_needs() -> None:
    stack = yaml.safe_load(STACK.read_text())
    member = stack["services"]["member"]
    deploy = member["deploy"]
    assert deploy["mode"] == "replicated"
    assert deploy["restart_policy"]["condition"] == "any"
    assert {"cpus", "memory"} <= set(deploy["resources"]["limits"])
    command = member["command"]
    # The arguments of the pool image's entry point, the agent (`stigmer agent join` runs it).
    assert command[:2] == ["--pool", "${STIGMER_POOL:-default}"]
    assert command[command.index("--server") + 1].startswith("${STIGMER_BROKER:?")
    assert "--sandbox" in command  # the agent's seccomp filter and no_new_privs
    # Credentials are Swarm secrets, read as files under /run/secrets.
    secrets = {s["source"]: s for s in member["secrets"]}
    assert set(secrets) == set(stack["secrets"]) == {"stigmer_server_key", "stigmer_pool_cert"}
    for option, source in (
        ("--server-key", "stigmer_server_key"),
        ("--curve-cert", "stigmer_pool_cert"),
    ):
        assert command[command.index(option) + 1] == f"/run/secrets/{secrets[source]['target']}"
    uid = member["user"].split(":")[0]
    assert int(uid) > 0
    cert = secrets["stigmer_pool_cert"]
    assert (cert["uid"], cert["mode"]) == (uid, 0o400)  # the agent refuses a key others may read
    # Hardened as a Docker sandbox, as far as a stack carries it.
    assert member["cap_drop"] == ["ALL"]
    assert member["read_only"] is True
    tmpfs = {v["target"] for v in member["volumes"] if v["type"] == "tmpfs"}
    assert {"/tmp", "/var/tmp", member["working_dir"]} <= tmpfs
    # A tmpfs over a directory of the image takes its owner and mode (root's /workspace in the
    # basic tier): the working directory is one no image has.
    assert member["working_dir"].startswith("/tmp/")
    assert stack["networks"]["pool"]["driver"] == "overlay"
    assert member["networks"] == ["pool"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_accepts_the_swarm_stack(tmp_path: Path) -> None:
    # `docker stack config` checks the file against the CLI's own stack schema, offline.
    for name in ("server.key", "pool.key_secret"):
        (tmp_path / name).write_text("placeholder\n")
    env = {
        **os.environ,
        "DOCKER_HOST": "unix:///nonexistent",  # proves no engine is asked
        "STIGMER_BROKER": "tcp://10.0.0.1:5701",
        "STIGMER_SERVER_KEY_FILE": str(tmp_path / "server.key"),
        "STIGMER_POOL_CERT_FILE": str(tmp_path / "pool.key_secret"),
    }
    config = subprocess.run(
        ["docker", "stack", "config", "-c", str(STACK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    if config.returncode != 0 and "unknown" in config.stderr and "config" in config.stderr:
        pytest.skip(f"this docker CLI has no `stack config`: {config.stderr.strip()}")
    assert config.returncode == 0, config.stderr
    rendered = yaml.safe_load(config.stdout)
    assert rendered["services"]["member"]["command"][3] == "tcp://10.0.0.1:5701"
    del env["STIGMER_BROKER"]
    missing = subprocess.run(
        ["docker", "stack", "config", "-c", str(STACK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert missing.returncode != 0
    assert "set STIGMER_BROKER to the broker's agent endpoint" in missing.stderr
