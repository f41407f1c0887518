"""Sandbox images: find, pull or build the image a sandbox kernel runs, ready for the agent.

Resolution of ``STIGMER_SANDBOX_IMAGE``: use the local image; else pull it when auto-pull is on;
else, for the basic tier's tag, build ``sandbox/Dockerfile.sandbox.basic``; else one error that
lists what was tried. An image whose python3 lacks what the agent needs (Python >= 3.10 with
pyzmq and msgpack) gets a thin derived layer that installs them; a kernel started with a
requirements file runs on a layer with those packages, tagged by a content hash so the same
requirements reuse the same image.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StigmerError
from .progress import REPORT_INTERVAL, PullTally, build_report, build_step, pull_report

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

#: Lines of a failing build step's output an error message quotes, and the characters kept of
#: each (a line is cut at its end, so the start of pip's or curl's reason stays).
_ERROR_LINES = 4
_ERROR_WIDTH = 300
#: ANSI escape sequences (the classic builder colours a step's stderr) and the control characters
#: but tab and carriage return, stripped from a step's output before it is quoted.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: titles, links
    r"|\x1b.?|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # carriage returns: see _clean
)
#: Lines of a step's output that say nothing about why it failed (pip's upgrade notice, the
#: classic builder's own line after a failed step).
_NOISE = ("[notice]", "Removing intermediate container ")

#: A requirements layer, in two stages. ``install`` (discarded) gets the host's CA bundle for
#: pip and installs into a staging root (``install.py``, :data:`_INSTALL_SCRIPT`); the image
#: copies only what pip installed to where the base's python3 finds it, then deletes the files
#: of the versions pip replaced (listed in replaced.txt). No layer of the image holds the CA.
_REQUIREMENTS_LAYER = """\
FROM {base} AS install
USER root
COPY requirements.txt ca-certificates.crt install.py /opt/stigmer/
RUN python3 /opt/stigmer/install.py

FROM {base}
USER root
COPY --from=install /opt/stigmer/root/ /
RUN python3 -c "import os; f = '/opt/stigmer/replaced.txt'; \\
    [os.remove(p) for p in open(f).read().splitlines() if os.path.isfile(p)]; os.remove(f)"
"""
#: Stage ``install`` of :data:`_REQUIREMENTS_LAYER`: pip installs into ROOT (``--root``: each
#: file goes where a plain install puts it, under ROOT), and ROOT/opt/stigmer/replaced.txt lists
#: the files pip removed meanwhile (the older versions it replaced), which the image still has.
_INSTALL_SCRIPT = """\
import os, subprocess, sys
from importlib import metadata

ROOT, CA = "/opt/stigmer/root", "/opt/stigmer/ca-certificates.crt"


def installed():
    return {
        os.path.abspath(dist.locate_file(f))
        for dist in metadata.distributions()
        for f in dist.files or ()
    }


before = installed()
env = dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1")
if os.path.getsize(CA):
    env["PIP_CERT"] = CA
pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--root", ROOT]
code = subprocess.call([*pip, "-r", "/opt/stigmer/requirements.txt"], env=env)
if code:
    sys.exit(code)
gone = sorted(p for p in before - installed() if not os.path.lexists(ROOT + p))
os.makedirs(ROOT + "/opt/stigmer", exist_ok=True)
with open(ROOT + "/opt/stigmer/replaced.txt", "w") as out:
    out.writelines(p + "\\n" for p in gone)
"""

#: The host's CA bundle (the default of STIGMER_SANDBOX_CA_FILE), lent to the download stages of
#: the tier and requirements builds (TLS-intercepting proxies, private CAs).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: How a user names another image for the kernels a client creates: it travels with the
#: request, so it works with a server that started earlier with another one.
_NAME_AN_IMAGE = "--sandbox-image IMAGE, or STIGMER_SANDBOX_IMAGE where you run stigmer"


class ImageError(StigmerError):
    """The sandbox image could not be made ready."""


def sandbox_dir() -> Path | None:
    """The repository's sandbox/ directory (Dockerfiles of the tiers), if this is a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "sandbox"
    return candidate if (candidate / "Dockerfile.sandbox.basic").is_file() else None


class ImageResolver:
    def __init__(
        self,
        client_factory: Callable[[], Any],
        basic_tag: str,
        cache_file: Path,
        ca_file: Path = HOST_CA,
    ):
        self._client = client_factory
        self.basic_tag = basic_tag
        self.cache_file = cache_file
        self.ca_file = ca_file  # lent to the builds' download stages only
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
                tried.append(
                    "auto-pull is off (the server's STIGMER_SANDBOX_AUTO_PULL=false: to change "
                    "it, `stigmer server stop` and start it again without)"
                )
            if image == self.basic_tag:
                hint = (
                    "build it (make sandbox-build-basic) or name an image you have "
                    f"({_NAME_AN_IMAGE})"
                )
            else:
                tried.append(
                    f"not built (only {self.basic_tag} is built from the basic Dockerfile)"
                )
                hint = f"pull or build it, or name an image you have ({_NAME_AN_IMAGE})"
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
            tally, said, said_at = PullTally(), "", 0.0
            for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                tally.add(event)
                report = pull_report(image, tally)
                if tally.size and report != said and time.monotonic() - said_at >= REPORT_INTERVAL:
                    said, said_at = report, time.monotonic()
                    progress(report)
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
            with staged_context(directory, self.ca_file) as context:
                return self._build(client, context, "Dockerfile.sandbox.basic", image, progress)
        except ImageError as exc:  # one line, the failing step's last words included
            tried.append(f"build failed ({exc})")
            return None

    def _build(
        self,
        client: Any,
        path: str | None,
        dockerfile: str,
        tag: str,
        progress: Progress,
        fileobj: Any = None,
        made: list[tuple[int, str, str]] | None = None,
    ) -> Any:
        """Build ``tag``; ``made`` gets (stage, instruction, image id) of each step done."""
        import docker.errors

        kwargs: dict[str, Any] = {"tag": tag, "rm": True, "decode": True, "forcerm": True}
        if fileobj is not None:
            kwargs.update(fileobj=fileobj, custom_context=True)
        else:
            kwargs.update(path=path, dockerfile=dockerfile)
        output = StepOutput()  # what the current step printed: the installer's own error
        said_at = 0.0  # when a line of the step's output was last reported
        stage, instruction = -1, ""
        try:
            for event in client.api.build(**kwargs):
                text = str(event.get("stream", ""))
                step = build_step(text)
                if step is not None:
                    progress(build_report(tag, text))
                    output.clear()
                    instruction = step.instruction
                    stage += instruction.upper().startswith("FROM ")
                elif text.startswith(" ---> "):
                    done = text[6:].strip()
                    if made is not None and done and " " not in done:
                        made.append((stage, instruction, done))
                elif output.add(text) and time.monotonic() - said_at >= REPORT_INTERVAL:
                    said_at = time.monotonic()  # what it is doing now
                    progress(build_report(tag, output.lines[-1]))
                if "error" in event:
                    raise ImageError(_build_error(str(event["error"]).strip(), output.last()))
            return client.images.get(tag)
        except docker.errors.APIError as exc:
            raise ImageError(_short(exc)) from None

    def _agent_ready(self, client: Any, found: Any, name: str, progress: Progress) -> str:
        """``found`` if its python3 runs the agent, else a derived image that does."""
        import docker.errors

        cache = self._cache()
        if found.id in cache:
            if cache[found.id] in (name, found.id):
                return cache[found.id]  # the image just found: no second look-up
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
        layout = hashlib.sha256((_REQUIREMENTS_LAYER + _INSTALL_SCRIPT).encode()).hexdigest()
        key = f"{base_id}\n{layout}\n{requirements}"  # a new layout: no reuse of older layers
        tag = f"stigmer-requirements:{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        progress(f"installing requirements into {tag}")
        ca = self.ca_file.read_bytes() if self.ca_file.is_file() else b""
        files = {
            "requirements.txt": requirements.encode(),
            "ca-certificates.crt": ca,
            "install.py": _INSTALL_SCRIPT.encode(),
        }
        context = _context(_REQUIREMENTS_LAYER.format(base=base_id), files)
        made: list[tuple[int, str, str]] = []
        try:
            self._build(client, None, "Dockerfile", tag, progress, context, made)
        finally:
            _discard_install_stage(client, made)
        return tag


def _discard_install_stage(client: Any, made: list[tuple[int, str, str]]) -> None:
    """Remove the images a requirements build made for its install stage from the COPY of the
    CA on (the engine keeps them as build cache otherwise: the CA, the installed packages)."""
    import docker.errors

    first = next((i for i, (_, step, _) in enumerate(made) if step.startswith("COPY ")), None)
    ids = [image for i, (stage, _, image) in enumerate(made) if stage == 0 and i >= (first or 0)]
    for image in reversed(ids if first is not None else []):
        try:
            client.images.remove(image, noprune=True)
        except docker.errors.APIError as exc:  # e.g. another build's cache that is in use
            log.info("kept the install stage's image %s: %s", image, _short(exc))


@contextlib.contextmanager
def staged_context(directory: Path, ca_file: Path | None = None) -> Iterator[str]:
    """A copy of ``directory`` plus the host's CA bundle (``ca_file``, default :data:`HOST_CA`)
    as host-ca.crt, for builds behind TLS interception: the tier Dockerfiles give it to their
    download stages only, which the images do not keep."""
    ca = HOST_CA if ca_file is None else ca_file
    with tempfile.TemporaryDirectory(prefix="stigmer-build-") as context:
        shutil.copytree(directory, context, dirs_exist_ok=True)
        if ca.is_file():
            shutil.copy(ca, Path(context) / "host-ca.crt")
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


class StepOutput:
    """The last lines a build step printed, from the build stream's texts: they split lines
    anywhere (a step's stderr comes a few characters at a time) and carry ANSI colour codes.
    Holds at most :data:`_ERROR_LINES` lines of :data:`_ERROR_WIDTH` characters."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_ERROR_LINES)
        self._partial = ""  # the start of a line whose end has not come yet

    def add(self, text: str) -> bool:
        """Take a text of the stream; True when it completed a line."""
        *complete, partial = (self._partial + text).split("\n")
        self._partial = partial[-4 * _ERROR_WIDTH :]  # a line without end: its last part
        added = False
        for line in complete:
            cleaned = _clean(line)
            if cleaned and not cleaned.startswith(_NOISE):
                self.lines.append(cleaned)
                added = True
        return added

    def last(self) -> list[str]:
        """The complete lines, and the one still open (the failing step's last words)."""
        partial = _clean(self._partial)
        return [*self.lines, partial] if partial else list(self.lines)

    def clear(self) -> None:
        self.lines.clear()
        self._partial = ""


def _clean(line: str) -> str:
    """A line as a terminal shows it: the text after its last carriage return (a progress bar's
    final state), control sequences gone, cut to :data:`_ERROR_WIDTH` characters."""
    text = _CONTROL.sub("", line).rstrip("\r").rsplit("\r", 1)[-1].strip()
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 1] + "…"


def _build_error(error: str, output: list[str]) -> str:
    """Docker's "returned a non-zero code" with the last lines the failing step printed
    (pip's "No module named pip", "No matching distribution found for ...", fetch.sh's
    "download of URL failed"), on one line."""
    said = [line for line in output if line not in error]
    return f"{error}: {' / '.join(said)}" if said else error


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


__all__ = ["ImageError", "ImageResolver", "sandbox_dir"]
