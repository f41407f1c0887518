"""The auto-mode decision table, case by case (docs/sandbox/execution-modes.md has it too)."""

from __future__ import annotations

import pytest

from stigmer_kernel.auto import decide

SANDBOX = [
    # (command, rule)
    ("pip install requests", "package-manager"),
    ("pip --version", "package-manager"),
    ("pip3 install -r requirements.txt", "package-manager"),
    ("pip3.11 list", "package-manager"),
    ("/usr/bin/pip3 install x", "package-manager"),
    ("python -m pip install x", "package-manager"),
    ("python3.11 -m pip install --upgrade pip", "package-manager"),
    ("uv pip install ruff", "package-manager"),
    ("uv add httpx", "package-manager"),
    ("poetry add requests", "package-manager"),
    ("poetry install", "package-manager"),
    ("conda install numpy", "package-manager"),
    ("mamba install -y scipy", "package-manager"),
    ("npm install", "package-manager"),
    ("npm i -g typescript", "package-manager"),
    ("npm ci", "package-manager"),
    ("yarn add react", "package-manager"),
    ("yarn", "package-manager"),
    ("pnpm install", "package-manager"),
    ("apt update && apt install curl", "package-manager"),
    ("apt-get install -y jq", "package-manager"),
    ("yum install -y gcc", "package-manager"),
    ("dnf install vim", "package-manager"),
    ("apk add git", "package-manager"),
    ("brew install jq", "package-manager"),
    ("gem install rails", "package-manager"),
    ("cargo install ripgrep", "package-manager"),
    ("go install golang.org/x/tools/gopls@latest", "package-manager"),
    ("cd app && npm install", "package-manager"),
    ("(cd app; pip install -e .)", "package-manager"),
    ("env PIP_INDEX_URL=x pip install y", "package-manager"),
    ("FOO=1 BAR=2 pip install z", "package-manager"),
    ("time npm install", "package-manager"),
    ("ls; pip install x", "package-manager"),
    ("false || pip install x", "package-manager"),
    ("echo $(pip install x)", "package-manager"),
    ("echo `pip install x`", "package-manager"),
    ("sudo ls /root", "privilege"),
    ("echo hi | sudo tee /etc/motd", "privilege"),
    ("echo 127.0.0.1 db >> /etc/hosts", "system-write"),
    ("echo x > /usr/local/bin/tool", "system-write"),
    ("cp tool /usr/local/bin/", "system-write"),
    ("rm -rf /opt/old", "system-write"),
    ("mkdir -p /etc/myapp", "system-write"),
    ("sed -i s/a/b/ /etc/ssh/sshd_config", "system-write"),
    ("tee -a /etc/profile < snippet", "system-write"),
    ("curl -fsSL https://get.example.sh | sh", "download-exec"),
    ("wget -qO- https://x.sh | bash -s -- --yes", "download-exec"),
    ('sh -c "$(curl -fsSL https://x/install.sh)"', "download-exec"),
    ("bash <(curl -s https://x/install.sh)", "download-exec"),
    ('bash -c "npm install"', "package-manager"),
    ("sh -c 'cd app && pip install -e .'", "package-manager"),
    ("curl https://x.sh#v1 | sh", "download-exec"),
    ("ls # a comment; then\npip install x", "package-manager"),
]

LOCAL = [
    "ls -la",
    "echo pipeline",
    "cat pip.log",
    "grep pip requirements.txt",
    "which pip",
    'echo "pip install x"',
    "echo 'npm install'",
    "git status",
    "git commit -m 'apt install notes'",
    "python script.py",
    "python -m pytest -q",
    "npm run build",
    "npm test",
    "uv run pytest",
    "poetry run pytest",
    "cargo build --release",
    "go build ./...",
    "conda list",
    "brew list",
    "echo hi > /tmp/x",
    "rm -rf build/",
    "sed -i s/a/b/ notes.txt",
    "curl -fsSL https://example.com -o page.html",
    "cd /etc && cat hostname",
    "make -j2 test",
    "docker ps",
    "cat /etc/os-release",
    "pipx_helper --check",
    "mypip install",
    "diff <(ls a) <(ls b)",
    "ls # pip install x",
    "echo '#'; ls",
    "bash -c 'echo hi'",
]


@pytest.mark.parametrize(("command", "rule"), SANDBOX)
def test_goes_to_the_sandbox(command: str, rule: str) -> None:
    decision = decide(command)
    assert (decision.mode, decision.rule) == ("sandbox", rule), decision.reason
    assert decision.reason


@pytest.mark.parametrize("command", LOCAL)
def test_stays_local(command: str) -> None:
    decision = decide(command)
    assert (decision.mode, decision.rule) == ("local", "default"), decision.reason


def test_a_requirements_file_sends_anything_to_the_sandbox() -> None:
    decision = decide("ls", requirements=True)
    assert (decision.mode, decision.rule) == ("sandbox", "requirements")


def test_unparseable_commands_stay_local() -> None:
    assert decide("echo 'unclosed").mode == "local"
