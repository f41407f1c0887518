"""``stigmer sandbox build pool --from IMAGE``: an image that carries the agent, for pools.

A pool member runs in a cluster (Docker Swarm, Kubernetes) where no host directory holds this
package, so the image must carry it. The build copies this very package (the broker refuses a
member of another version) into ``/opt/stigmer`` on top of IMAGE, checks that IMAGE's Python 3
can import the agent with its two dependencies (pyzmq and msgpack: Debian's python3-zmq and
python3-msgpack, or pip's), puts a ``stigmer`` command on PATH, makes ``/workspace`` writable
by any user (a non-root member's scratch mount there takes its mode) and makes the agent the
entry point. The image is labelled with the agent's version (``stigmer.agent_version``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import StigmerError

PACKAGE = Path(__file__).resolve().parents[1]
#: Where the package lands in the image (on PYTHONPATH).
HOME = "/opt/stigmer"
LABEL_VERSION = "stigmer.agent_version"
DEFAULT_TAG = f"stigmer-pool:{__version__}"

_DOCKERFILE = f"""\
ARG FROM_IMAGE
FROM ${{FROM_IMAGE}}
COPY stigmer_kernel {HOME}/stigmer_kernel
ENV PYTHONPATH={HOME} PYTHONDONTWRITEBYTECODE=1
RUN python3 -c "import zmq, msgpack, stigmer_kernel.agent" || {{ \\
      echo "stigmer: this image's python3 cannot run the agent: it needs Python 3.11+ with" \\
           "pyzmq and msgpack (apt-get install python3-zmq python3-msgpack, or pip install" \\
           "pyzmq msgpack)" >&2; exit 1; }}
# `stigmer agent join --pool ...` for manifests that name their own command (Kubernetes).
RUN printf '#!/bin/sh\\nexec python3 -m stigmer_kernel "$@"\\n' > /usr/local/bin/stigmer \\
    && chmod 755 /usr/local/bin/stigmer
# A tmpfs or volume mounted over /workspace takes this directory's owner and mode: anyone's.
RUN mkdir -p /workspace && chmod 1777 /workspace
LABEL {LABEL_VERSION}="{__version__}"
ENTRYPOINT ["python3", "-m", "stigmer_kernel.agent"]
"""


def build(
    client: Any, from_image: str, tag: str | None, stream: Callable[..., None]
) -> tuple[str, int]:
    """Build the pool image from ``from_image``: (its tag, its size in bytes). ``stream``
    runs the build as ``stream(client, context, dockerfile, tag, buildargs)``."""
    tag = tag or DEFAULT_TAG
    if tag == from_image:
        raise StigmerError(f"the pool image would be tagged {tag}, its own base: pass --tag")
    with tempfile.TemporaryDirectory(prefix="stigmer-pool-") as context:
        shutil.copytree(
            PACKAGE,
            Path(context, "stigmer_kernel"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        Path(context, "Dockerfile.pool").write_text(_DOCKERFILE)
        stream(client, context, "Dockerfile.pool", tag, {"FROM_IMAGE": from_image})
    return tag, int(client.images.get(tag).attrs["Size"])
