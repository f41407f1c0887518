"""CurveZMQ keys and their files (stigmer_kernel/curve.py), without a server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq

from stigmer_kernel import curve
from stigmer_kernel.client import RemoteServer
from stigmer_kernel.errors import CurveKeyError


def mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_pair_round_trips_through_its_files_and_carries_a_handshake(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    public_file, secret_file = curve.keygen(str(tmp_path), "laptop")
    assert (public_file, secret_file) == (f"{tmp_path}/laptop.key", f"{tmp_path}/laptop.key_secret")
    assert mode(secret_file) == 0o600
    public, secret = curve.read_secret(secret_file)
    assert curve.read_public(public_file) == public and len(secret) == 40
    server_key = curve.ensure_server_keys(runtime)
    assert server_key == runtime / "curve" / "server.key"
    assert curve.ensure_server_keys(runtime) == server_key  # made once, kept
    server_public, server_secret = curve.server_keys(runtime)
    assert curve.read_public(server_key) == server_public
    assert mode(runtime / "curve") == mode(runtime / "curve" / "authorized") == 0o700
    assert mode(runtime / "curve" / "server.key_secret") == 0o600
    # The keys read back from the files make a working CurveZMQ pair.
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.REP)
        server.setsockopt(zmq.LINGER, 0)
        curve.make_server(server, server_secret, "test")
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        curve.make_client(client, curve.client_keys(server_key, secret_file))
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"ping")
        assert server.poll(5000)
        assert server.recv() == b"ping"
        server.send(b"pong")
        assert client.poll(5000) and client.recv() == b"pong"
    finally:
        ctx.destroy(linger=0)


def test_a_secret_file_others_may_open_is_refused(tmp_path: Path) -> None:
    public_file, secret_file = curve.keygen(str(tmp_path), "laptop")
    os.chmod(secret_file, 0o644)
    with pytest.raises(CurveKeyError, match=r"open to other users \(mode 0644\).*chmod 600"):
        curve.read_secret(secret_file)
    remote = RemoteServer("tcp://127.0.0.1:1", b"k", public_file, secret_file)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(CurveKeyError, match="open to other users"):
            remote.secure(sock)
    finally:
        sock.close(0)
        ctx.term()
    # A public file is handed around: its mode is its own business, and it is no secret file.
    os.chmod(public_file, 0o644)
    assert len(curve.read_public(public_file)) == 40
    with pytest.raises(CurveKeyError, match=r"laptop\.key holds no secret key"):
        curve.read_secret(public_file)


def test_missing_and_malformed_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CurveKeyError, match=r"cannot read .*nowhere\.key: no such file"):
        curve.read_public(tmp_path / "nowhere.key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(CurveKeyError, match="not a CurveZMQ key file"):
        curve.read_public(junk)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(CurveKeyError, match="malformed public key"):
        curve.read_public(short)
    # A secret file whose two keys do not belong together.
    _, secret_file = curve.keygen(str(tmp_path), "a")
    other_public, _ = zmq.curve_keypair()
    text = Path(secret_file).read_text()
    public, _ = curve.read_secret(secret_file)
    Path(secret_file).write_text(text.replace(public.decode(), other_public.decode()))
    with pytest.raises(CurveKeyError, match="not the one of its public key"):
        curve.read_secret(secret_file)


def test_authorize_then_check(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    check = curve.AuthorizedKeys(curve.authorized_dir(runtime))
    trusted, _ = curve.keygen(str(tmp_path), "trusted")
    later, _ = curve.keygen(str(tmp_path), "later")
    assert not check.callback(curve.ZAP_DOMAIN, curve.read_public(trusted))  # no directory yet
    target = curve.authorize(runtime, Path(trusted))
    assert target == runtime / "curve" / "authorized" / "trusted.key"
    assert check.callback(curve.ZAP_DOMAIN, curve.read_public(trusted))
    assert not check.callback(curve.ZAP_DOMAIN, curve.read_public(later))
    curve.authorize(runtime, Path(later))  # seen at the next check, no restart
    assert check.callback(curve.ZAP_DOMAIN, curve.read_public(later))
    assert curve.authorized_keys(curve.authorized_dir(runtime)) == {
        curve.read_public(trusted),
        curve.read_public(later),
    }
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(CurveKeyError):
        curve.authorize(runtime, bad)
    assert not (runtime / "curve" / "authorized" / "bad.key").exists()


def test_sandbox_agent_keys_are_read_once(tmp_path: Path) -> None:
    public, secret = curve.keypair()
    keys = curve.ClientKeys(curve.keypair()[0], public, secret)
    path = tmp_path / "curve"
    curve.write_agent_keys(path, keys)
    assert mode(path) == 0o600
    assert curve.take_agent_keys(str(path)) == keys
    assert not path.exists()  # read, then deleted
    path.write_bytes(b"one\ntwo\n")
    with pytest.raises(CurveKeyError, match="three z85 keys"):
        curve.take_agent_keys(str(path))


def test_sandbox_keys_pass_only_while_the_broker_holds_them() -> None:
    public, _ = curve.keypair()
    made = {"k1": public}
    check = curve.SandboxKeys(made)
    assert check.callback(curve.SANDBOX_ZAP_DOMAIN, public)
    del made["k1"]  # the incarnation ended: its key passes no more
    assert not check.callback(curve.SANDBOX_ZAP_DOMAIN, public)


def test_the_module_is_a_leaf() -> None:
    """Broker, CLI, client and agent import it; it imports none of them (only zmq, errors)."""
    import ast

    tree = ast.parse(Path(curve.__file__).read_text())
    ours = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module
    }
    assert ours == {"errors"}
