"""The Jupyter community's own kernel test suite, run against stigmer-local.

The kernel is started through its kernelspec with no stigmer server running: the launcher starts
one in the background (and the class stops it at the end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jupyter_kernel_test

from tests.conftest import short_tempdir, stigmer_env
from tests.e2e.conftest import install_kernelspec


class TestStigmerLocal(jupyter_kernel_test.KernelTests):
    kernel_name = "stigmer-local"
    language_name = "bash"
    file_extension = ".sh"

    code_hello_world = "echo 'hello, world'"
    code_stderr = "echo 'something bad' >&2"
    code_generate_error = "exit 3"
    completion_samples = [
        {"text": "ech", "matches": {"echo"}},
        {"text": "echo $BASH_VERSI", "matches": {"$BASH_VERSINFO", "$BASH_VERSION"}},
    ]
    complete_code_samples = ["echo hi", "for i in 1 2; do echo $i; done", "f() { :; }"]
    incomplete_code_samples = ["for i in 1 2; do", "echo 'unclosed", "if true; then", "echo \\"]
    invalid_code_samples = ["fi", "done", "echo )"]
    code_inspect_sample = "cd"

    saved_env: dict[str, str | None] = {}
    runtime_dir = ""

    @classmethod
    def setUpClass(cls) -> None:
        cls.runtime_dir = short_tempdir()
        env = stigmer_env(cls.runtime_dir)
        env["JUPYTER_PATH"] = install_kernelspec(env)
        for key in ("STIGMER_RUNTIME_DIR", "STIGMER_CONFIG", "PYTHONPATH", "JUPYTER_PATH"):
            cls.saved_env[key] = os.environ.get(key)
            os.environ[key] = env[key]
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        subprocess.run(
            [sys.executable, "-m", "stigmer_kernel", "server", "stop"],
            env=dict(os.environ),
            capture_output=True,
            timeout=30,
            check=False,
        )
        for key, value in cls.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(cls.runtime_dir, ignore_errors=True)

    def test_stderr_is_not_merged_into_stdout(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper("echo out; echo err >&2")
        streams = [(m["content"]["name"], m["content"]["text"]) for m in outputs]
        assert reply["content"]["status"] == "ok"
        assert ("stdout", "out\n") in streams and ("stderr", "err\n") in streams

    def test_error_reply_carries_the_exit_code(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper("exit 5")
        content = reply["content"]
        assert (content["status"], content["exit_code"]) == ("error", 5)
        assert content["ename"] == "CommandFailed" and content["traceback"]
        assert [m["msg_type"] for m in outputs] == ["error"]
