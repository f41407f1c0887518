"""The agent's link to its broker: a full send queue neither loses output nor hangs the agent.

A real agent process talks to a ROUTER the test drives by hand, so the test decides when the
"broker" reads, answers heartbeats, or is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from stigmer_kernel.config import EnvVar
from stigmer_kernel.protocol import Message, MsgType, Session
from tests.conftest import ROOT, processes_matching, short_tempdir


class HandBroker:
    """A ROUTER bound where one agent process connects, answering only when told to."""

    def __init__(self, orphan_timeout: float) -> None:
        self.dir = short_tempdir()
        self.key = os.urandom(16).hex().encode()
        self.session = Session(self.key, check_replay=False)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, 1)  # the agent's own queue is what fills up
        endpoint = f"ipc://{self.dir}/agent.sock"
        self.router.bind(endpoint)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMER_")}
        env[EnvVar.AGENT_KEY.value] = self.key.decode()
        env["PYTHONPATH"] = str(ROOT)
        self.log = Path(self.dir, "agent.log")
        with self.log.open("wb") as log:
            self.agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stigmer_kernel.agent",
                    "--endpoint",
                    endpoint,
                    "--kernel-id",
                    "k-link",
                    "--workdir",
                    f"{self.dir}/work",
                    "--heartbeat-interval",
                    "0.1",
                    "--orphan-timeout",
                    str(orphan_timeout),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.identity = b""

    def recv(self, timeout: float = 5.0) -> tuple[bytes, Message]:
        assert self.router.poll(int(timeout * 1000)), "nothing from the agent in time"
        ids, msg = self.session.deserialize(self.router.recv_multipart())
        return ids[0], msg

    def answer_heartbeat(self, identity: bytes) -> None:
        ack = self.session.msg(MsgType.AGENT_HEARTBEAT.value, {})
        self.router.send_multipart(self.session.serialize(ack, ids=[identity]))

    def registered(self) -> None:
        while not self.identity:
            identity, msg = self.recv()
            if msg.msg_type == MsgType.AGENT_REGISTER.value:
                self.identity = identity

    def execute(self, code: str) -> Message:
        # No output cap: past it the agent would stop sending, and its queue stop filling.
        content = {"code": code, "output_limit": 1 << 40}
        request = self.session.msg(MsgType.EXECUTE_REQUEST.value, content)
        self.router.send_multipart(self.session.serialize(request, ids=[self.identity]))
        return request

    def close(self) -> None:
        if self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()
        self.router.close(0)
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def hand_broker() -> Iterator[Any]:
    brokers: list[HandBroker] = []

    def start(orphan_timeout: float) -> HandBroker:
        broker = HandBroker(orphan_timeout)
        brokers.append(broker)
        broker.registered()
        return broker

    yield start
    for broker in brokers:
        broker.close()


def test_agent_blocked_sending_to_a_gone_broker_exits(hand_broker: Any) -> None:
    broker: HandBroker = hand_broker(orphan_timeout=2.0)
    tag = uuid.uuid4().hex[:8]
    request = broker.execute(f"exec -a stg-yes-{tag} yes")
    while True:  # a live broker: output flows and heartbeats are answered
        identity, msg = broker.recv()
        if identity.endswith(b":hb"):
            broker.answer_heartbeat(identity)
        elif msg.parent_header.get("msg_id") == request.msg_id:
            break
    # Credit for all the output there will be, so that flow control never holds it back: the
    # agent keeps sending until its own queue is full.
    ack = broker.session.msg(MsgType.OUTPUT_ACK.value, {"delivered": 1 << 40}, request)
    broker.router.send_multipart(broker.session.serialize(ack, ids=[broker.identity]))
    broker.router.close(0)  # now it is gone
    gone_at = time.monotonic()
    # The endless output fills the agent's send queue well within the orphan timeout, so the
    # agent notices the broker's silence while a send is blocked.
    code = broker.agent.wait(timeout=10)
    assert code == 0
    # Orphan timeout, a retry period, clean-up; slack doubled for a slow machine (a blocked send
    # that never noticed would hang until killed).
    assert time.monotonic() - gone_at < 2.0 + 5.0
    # Usually noticed inside the blocked send ("... while sending to it"); on a loaded machine
    # the heartbeat check may see the silence first. Either way it must exit, not hang.
    assert "no answer from the broker for 2s" in broker.log.read_text()
    assert processes_matching(f"stg-yes-{tag}") == []  # its command ended with it


def test_slow_broker_loses_no_output(hand_broker: Any) -> None:
    broker: HandBroker = hand_broker(orphan_timeout=3.0)
    size = 128 * 1024 * 1024  # far more than the agent's queue holds (1000 messages)
    request = broker.execute(f"head -c {size} /dev/zero")
    # The broker reads nothing for a while: the agent's sends time out again and again, and
    # it must retry rather than drop output, since the broker is still within orphan_timeout.
    time.sleep(1.0)
    received = 0
    while True:
        identity, msg = broker.recv()
        if identity.endswith(b":hb"):
            broker.answer_heartbeat(identity)
            continue
        assert msg.parent_header.get("msg_id") == request.msg_id
        if msg.msg_type == MsgType.STREAM.value:
            received += len(msg.content["data"])
        elif msg.msg_type == MsgType.EXECUTE_REPLY.value:
            break
    assert received == size
    assert msg.content["exit_code"] == 0 and msg.content["truncated"] is False
    assert broker.agent.poll() is None  # still serving
