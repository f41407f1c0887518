"""``stigmer sandbox build|pull|test|clean``: the sandbox tiers' images.

* ``build basic|full`` builds ``sandbox/Dockerfile.sandbox.<tier>`` (``--base-image`` sets the
  ``BASE_IMAGE`` build argument, e.g. an offline Debian image where no registry is reachable);
  ``build pool --from IMAGE`` builds an image that carries the agent, for pools (pool_image.py);
* ``pull`` pulls ``STIGMER_SANDBOX_IMAGE``;
* ``test`` runs ``python --version``, ``node --version`` and ``git --version`` in an image;
* ``clean`` removes stigmer's images (tiers, agent layers, requirements layers) and containers
  left by servers that are not running.

``build`` and ``pull`` draw a progress bar when stderr is a terminal, plain lines otherwise
(``progress.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import StigmerError
from ..provisioners.container import LABEL_RUNTIME, LABEL_SERVER
from ..provisioners.images import sandbox_dir, staged_context
from ..runtime import RuntimeDir
from .common import load
from .progress import ProgressDisplay

BASIC_TAG = "ghcr.io/stigmer/agent-sandbox-basic:latest"
FULL_TAG = "stigmer-sandbox-full:latest"
#: Images stigmer makes on its own (derived layers), removed by ``clean``.
DERIVED = ("stigmer-agent-layer", "stigmer-requirements")
TOOLS = (("python", "python --version"), ("node", "node --version"), ("git", "git --version"))


def add_parser(sub: Any) -> None:
    sandbox = sub.add_parser("sandbox", help="build, pull, test or clean sandbox images")
    ssub = sandbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = ssub.add_parser("build", help="build a tier's image from sandbox/Dockerfile.sandbox.*")
    build.add_argument(
        "tier",
        choices=["basic", "full", "pool"],
        help="which tier's Dockerfile, or pool: IMAGE with the agent in it (--from)",
    )
    build.add_argument(
        "--tag", help=f"image tag (default: {BASIC_TAG} / {FULL_TAG} / stigmer-pool:VERSION)"
    )
    build.add_argument(
        "--from",
        dest="from_image",
        metavar="IMAGE",
        help="pool: the image to add the agent to (any with Python 3.11+, pyzmq and msgpack)",
    )
    build.add_argument("--base-image", help="BASE_IMAGE build argument (default: python:3.11-slim)")
    pull = ssub.add_parser("pull", help="pull the sandbox image (STIGMER_SANDBOX_IMAGE)")
    pull.add_argument("image", nargs="?", help="image to pull (default: STIGMER_SANDBOX_IMAGE)")
    test = ssub.add_parser("test", help="check python, node and git in an image")
    test.add_argument("image", nargs="?", help="image to check (default: STIGMER_SANDBOX_IMAGE)")
    ssub.add_parser(
        "clean",
        help="delete stigmer's images and dead servers' containers and networks",
        description="Deletes the images stigmer makes or names: the tiers ("
        f"{BASIC_TAG}, {FULL_TAG}) and the derived agent and requirements layers "
        f"({', '.join(DERIVED)}); the next sandbox kernel builds or pulls them again. Also "
        "removes the containers and networks of servers that are no longer running. Images "
        "a container still uses are kept.",
    )


def _client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
    except Exception:
        raise StigmerError(
            "Docker engine not reachable — start Docker (scripts/provision-docker.sh does it on "
            "Debian)"
        ) from None
    return client


def run(args: argparse.Namespace) -> int:
    config = load(args)
    client = _client()
    if args.action == "build":
        return _build(client, args, config)
    if args.action == "pull":
        return _pull(client, args.image or config.sandbox_image)
    if args.action == "test":
        return _test(client, args.image or config.sandbox_image)
    return _clean(client, config)


def _say(text: str) -> None:
    print(f"stigmer: {text}", file=sys.stderr, flush=True)


def _build(client: Any, args: argparse.Namespace, config: Config) -> int:
    if args.tier == "pool":
        from . import pool_image

        if not args.from_image:
            raise StigmerError("stigmer sandbox build pool needs --from IMAGE")
        _say(f"building a pool image from {args.from_image}")
        tag, size = pool_image.build(client, args.from_image, args.tag, _stream_build)
        print(f"built {tag} ({size / 1e6:.0f} MB)")
        return 0
    if args.from_image:
        raise StigmerError("--from is for `stigmer sandbox build pool`; tiers take --base-image")
    directory = sandbox_dir()
    if directory is None:
        raise StigmerError("no sandbox/ directory with the tier Dockerfiles next to this package")
    default = BASIC_TAG if args.tier == "basic" else FULL_TAG
    if args.tier == "basic" and config.sandbox_image != BASIC_TAG:
        default = config.sandbox_image  # what sandbox mode will look for
    tag = args.tag or default
    if args.base_image and tag == args.base_image:
        raise StigmerError(
            f"the build would be tagged {tag}, its own base image (STIGMER_SANDBOX_IMAGE names "
            "it) — pass --tag NAME for the result"
        )
    buildargs = {"BASE_IMAGE": args.base_image} if args.base_image else {}
    _say(f"building {tag} from {directory}/Dockerfile.sandbox.{args.tier}")
    with staged_context(directory, config.sandbox_ca_file) as context:
        _stream_build(client, context, f"Dockerfile.sandbox.{args.tier}", tag, buildargs)
    size = client.images.get(tag).attrs["Size"]
    print(f"built {tag} ({size / 1e6:.0f} MB)")
    return 0


def _stream_build(
    client: Any, context: str, dockerfile: str, tag: str, buildargs: dict[str, str]
) -> None:
    import docker.errors

    try:
        with ProgressDisplay() as display:
            for event in client.api.build(
                path=context,
                dockerfile=dockerfile,
                tag=tag,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                decode=True,
            ):
                display.build_event(tag, event)
                if "error" in event:
                    raise StigmerError(f"build of {tag} failed: {str(event['error']).strip()}")
    except docker.errors.APIError as exc:
        raise StigmerError(f"build of {tag} failed: {exc.explanation or exc}") from None


def _pull(client: Any, image: str) -> int:
    import docker.errors

    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    _say(f"pulling {image}")
    try:
        with ProgressDisplay() as display:
            for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    raise StigmerError(f"pull of {image} failed: {event['error']}")
                display.pull_event(image, event)
    except docker.errors.APIError as exc:
        raise StigmerError(f"pull of {image} failed: {exc.explanation or exc}") from None
    print(f"pulled {image}")
    return 0


def _test(client: Any, image: str) -> int:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise StigmerError(
            f"no image {image} here — build it (stigmer sandbox build basic) or pull it "
            "(stigmer sandbox pull)"
        ) from None
    except docker.errors.APIError as exc:
        raise StigmerError(f"cannot inspect {image}: {exc.explanation or exc}") from None
    failed = 0
    for name, command in TOOLS:
        try:
            out = client.containers.run(
                image, ["sh", "-c", command], entrypoint=[], remove=True, network_mode="none"
            )
            print(f"{name}: {out.decode(errors='replace').strip()}")
        except docker.errors.ImageNotFound:
            raise StigmerError(
                f"no image {image} — build it: stigmer sandbox build basic"
            ) from None
        except docker.errors.ContainerError as exc:
            failed += 1
            err = (exc.stderr or b"").decode(errors="replace").strip()
            print(f"{name}: MISSING ({err or f'exit {exc.exit_status}'})")
        except docker.errors.APIError as exc:
            raise StigmerError(f"cannot run {image}: {exc.explanation or exc}") from None
    print(f"{image}: {'ok' if not failed else f'{failed} tool(s) missing'}")
    return 1 if failed else 0


def _clean(client: Any, config: Config) -> int:
    import docker.errors

    removed_containers = 0
    listed = client.containers.list(all=True, ignore_removed=True, filters={"label": LABEL_SERVER})
    for container in listed:
        owner = (container.labels or {}).get(LABEL_RUNTIME)
        if not (owner and RuntimeDir(Path(owner)).server_running()):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue  # removed meanwhile (its server's own cleanup)
            removed_containers += 1
    from ..provisioners.network import reap_networks

    def dead(labels: Any) -> bool:
        owner = labels.get(LABEL_RUNTIME)
        return not (owner and RuntimeDir(Path(owner)).server_running())

    removed_networks = reap_networks(client, LABEL_SERVER, dead)  # and their firewall rules
    removed_images = []
    names = {*DERIVED, BASIC_TAG.rsplit(":", 1)[0], FULL_TAG.rsplit(":", 1)[0]}
    for image in client.images.list():
        for tag in image.tags:
            if tag.rsplit(":", 1)[0] in names:
                try:
                    client.images.remove(tag, force=False)
                    removed_images.append(tag)
                except docker.errors.APIError as exc:
                    _say(f"kept {tag}: {exc.explanation or exc}")
    print(
        f"removed {removed_containers} container(s) and {removed_networks} network(s) of "
        f"stopped servers and {len(removed_images)} image(s): {', '.join(removed_images) or '-'}"
    )
    return 0
