"""Sandbox images: find, pull or build the image a sandbox kernel runs, ready for the agent.

Resolution of ``STIGMER_SANDBOX_IMAGE``: use the local image; else pull it when auto-pull is on;
else, for the basic tier's tag, build ``sandbox/Dockerfile.sandbox.basic``; else one error that
lists what was tried. An image whose python3 lacks what the agent needs (Python >= 3.10 with
pyzmq and msgpack) gets a thin derived layer that installs them; a kernel started with a
requirements file runs on a layer with those packages, tagged by a content hash so the same
requirements reuse the same image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StigmerError

log = logging.getLogger("stigmer.sandbox")

Progress = Callable[[str], None]

#: The check an image must pass to run the agent as it is.
AGENT_CHECK = (
    "import sys, zmq, msgpack; "
    "sys.exit(0 if sys.version_info >= (3, 10) and hasattr(zmq, 'DEALER') else 3)"
)

_AGENT_LAYER = """\
FROM {base}
USER root
RUN set -e; \\
    if command -v apt-get >/dev/null 2>&1; then \\
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-zmq python3-msgpack bash procps && rm -rf /var/lib/apt/lists/*; \\
    elif command -v apk >/dev/null 2>&1; then \\
      apk add --no-cache python3 py3-pyzmq py3-msgpack bash procps; \\
    elif command -v dnf >/dev/null 2>&1; then \\
      dnf install -y python3 python3-zmq python3-msgpack bash procps-ng && dnf clean all; \\
    else \\
      python3 -m pip install --no-cache-dir pyzmq msgpack; \\
    fi; \\
    python3 -c "{check}"
"""

_REQUIREMENTS_LAYER = """\
FROM {base}
USER root
COPY requirements.txt /opt/stigmer/requirements.txt
COPY ca-certificates.crt /opt/stigmer/ca-certificates.crt
RUN if [ -s /opt/stigmer/ca-certificates.crt ]; then \\
      export PIP_CERT=/opt/stigmer/ca-certificates.crt; fi; \\
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \\
      -r /opt/stigmer/requirements.txt \\
    && rm /opt/stigmer/ca-certificates.crt
"""

#: The host's CA bundle, lent to pip while it installs requirements (proxies, private CAs).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(StigmerError):
    """The sandbox image could not be made ready."""


def sandbox_dir() -> Path | None:
    """The repository's sandbox/ directory (Dockerfiles of the tiers), if this is a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "sandbox"
    return candidate if (candidate / "Dockerfile.sandbox.basic").is_file() else None


class ImageResolver:
    def __init__(self, client_factory: Callable[[], Any], basic_tag: str, cache_file: Path):
        self._client = client_factory
        self.basic_tag = basic_tag
        self.cache_file = cache_file
        self._lock = threading.Lock()

    # -- cache of images known to be agent-ready ----------------------------------------------
    def _cache(self) -> dict[str, str]:
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, image_id: str, runnable: str) -> None:
        data = self._cache()
        data[image_id] = runnable
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.cache_file)

    # -- resolution -----------------------------------------------------------------------------
    def resolve(
        self, image: str, auto_pull: bool, requirements: str | None, progress: Progress
    ) -> str:
        """The tag or id of an image that runs the agent (and has ``requirements``)."""
        import docker.errors

        client = self._client()
        tried: list[str] = []
        try:
            found = client.images.get(image)
        except docker.errors.ImageNotFound:
            found = None
            tried.append("not found locally")
        if found is None and auto_pull:
            found = self._pull(client, image, progress, tried)
        if found is None and image == self.basic_tag:
            found = self._build_basic(client, image, progress, tried)
        if found is None:
            if not auto_pull:
                tried.append("auto-pull is off (STIGMER_SANDBOX_AUTO_PULL=false)")
            if image == self.basic_tag:
                hint = (
                    "build it (make sandbox-build-basic) or set STIGMER_SANDBOX_IMAGE to an "
                    "image you have"
                )
            else:
                tried.append(
                    f"not built (only {self.basic_tag} is built from the basic Dockerfile)"
                )
                hint = (
                    "pull or build it, or name an image you have (STIGMER_SANDBOX_IMAGE, "
                    "--sandbox-image)"
                )
            raise ImageError(
                f"sandbox image {image!r} is not available: {'; '.join(tried)} — {hint}"
            )
        with self._lock:
            runnable = self._agent_ready(client, found, image, progress)
            if requirements:
                runnable = self._with_requirements(client, runnable, requirements, progress)
        return runnable

    def _pull(self, client: Any, image: str, progress: Progress, tried: list[str]) -> Any:
        import docker.errors

        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        progress(f"pulling {image}")
        try:
            layers: dict[str, tuple[int, int]] = {}
            last = -10
            for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    layers[event["id"]] = (detail.get("current", 0), detail["total"])
                    done = sum(c for c, _ in layers.values())
                    total = sum(t for _, t in layers.values())
                    percent = int(100 * done / total) if total else 0
                    if percent >= last + 10:
                        last = percent
                        progress(f"pulling {image}: {percent}% of {total / 1e6:.0f} MB")
                if "error" in event:
                    raise docker.errors.APIError(event["error"])
            return client.images.get(image)
        except (docker.errors.APIError, docker.errors.ImageNotFound) as exc:
            tried.append(f"pull failed ({_short(exc)})")
            return None

    def _build_basic(self, client: Any, image: str, progress: Progress, tried: list[str]) -> Any:
        directory = sandbox_dir()
        if directory is None:
            tried.append("no sandbox/Dockerfile.sandbox.basic to build it from")
            return None
        progress(f"building {image} from {directory}/Dockerfile.sandbox.basic")
        try:
            with staged_context(directory) as context:
                return self._build(client, context, "Dockerfile.sandbox.basic", image, progress)
        except ImageError as exc:
            tried.append(f"build failed ({_short(exc)})")
            return None

    def _build(
        self,
        client: Any,
        path: str | None,
        dockerfile: str,
        tag: str,
        progress: Progress,
        fileobj: Any = None,
    ) -> Any:
        import docker.errors

        kwargs: dict[str, Any] = {"tag": tag, "rm": True, "decode": True, "forcerm": True}
        if fileobj is not None:
            kwargs.update(fileobj=fileobj, custom_context=True)
        else:
            kwargs.update(path=path, dockerfile=dockerfile)
        try:
            for event in client.api.build(**kwargs):
                line = str(event.get("stream", "")).strip()
                if line.startswith("Step "):
                    progress(f"building {tag}: {line}")
                if "error" in event:
                    raise ImageError(str(event["error"]).strip())
            return client.images.get(tag)
        except docker.errors.APIError as exc:
            raise ImageError(_short(exc)) from None

    def _agent_ready(self, client: Any, found: Any, name: str, progress: Progress) -> str:
        """``found`` if its python3 runs the agent, else a derived image that does."""
        import docker.errors

        cache = self._cache()
        if found.id in cache:
            try:
                client.images.get(cache[found.id])  # e.g. `stigmer sandbox clean` removed it
                return cache[found.id]
            except docker.errors.ImageNotFound:
                pass
        if self._passes_check(client, found.id):
            self._remember(found.id, name)
            return name
        tag = f"stigmer-agent-layer:{found.id.split(':')[-1][:16]}"
        progress(f"{name} lacks python3 with pyzmq and msgpack: building {tag}")
        dockerfile = _AGENT_LAYER.format(base=found.id, check=AGENT_CHECK)
        built = self._build(client, None, "Dockerfile", tag, progress, _context(dockerfile, {}))
        if not self._passes_check(client, built.id):
            raise ImageError(f"{tag} still cannot run the agent (python3 >= 3.10, pyzmq, msgpack)")
        self._remember(found.id, tag)
        return tag

    @staticmethod
    def _passes_check(client: Any, image_id: str) -> bool:
        import docker.errors

        try:
            client.containers.run(
                image_id,
                ["python3", "-c", AGENT_CHECK],
                entrypoint=[],
                remove=True,
                network_mode="none",
                user="0:0",
            )
            return True
        except (docker.errors.ContainerError, docker.errors.APIError):
            return False

    def _with_requirements(
        self, client: Any, base: str, requirements: str, progress: Progress
    ) -> str:
        import docker.errors

        base_id = client.images.get(base).id  # the content, not a tag that may move
        digest = hashlib.sha256(f"{base_id}\n{requirements}".encode()).hexdigest()[:16]
        tag = f"stigmer-requirements:{digest}"
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        progress(f"installing requirements into {tag}")
        ca = HOST_CA.read_bytes() if HOST_CA.is_file() else b""
        files = {"requirements.txt": requirements.encode(), "ca-certificates.crt": ca}
        dockerfile = _REQUIREMENTS_LAYER.format(base=base)
        self._build(client, None, "Dockerfile", tag, progress, _context(dockerfile, files))
        return tag


@contextlib.contextmanager
def staged_context(directory: Path) -> Iterator[str]:
    """A copy of ``directory`` plus the host's CA bundle (host-ca.crt), for builds behind TLS
    interception: the tier Dockerfiles use it for pip and curl during the build only."""
    with tempfile.TemporaryDirectory(prefix="stigmer-build-") as context:
        shutil.copytree(directory, context, dirs_exist_ok=True)
        if HOST_CA.is_file():
            shutil.copy(HOST_CA, Path(context) / "host-ca.crt")
        yield context


def _context(dockerfile: str, files: dict[str, bytes]) -> io.BytesIO:
    """A build context as an in-memory tar: the Dockerfile plus ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


__all__ = ["ImageError", "ImageResolver", "sandbox_dir"]
