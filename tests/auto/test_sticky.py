"""Sticky escalation, decision by decision: once a command changed a kernel's sandbox, what
follows goes there too (docs/sandbox/execution-modes.md, "Install, then use")."""

from __future__ import annotations

import os

import pytest

from stigmer_kernel.auto import LOCAL, Escalation, decide, explain

HOME = os.path.expanduser("~")
WORKSPACE = "/srv/project"  # the kernel's workspace on the host
SIX = Escalation.of("pip install six", decide("pip install six"))
STICKY_REASON = "kernel escalated by `pip install six`, so later commands follow it to the sandbox"

# Commands that change the sandbox: the first of them escalates its kernel.
ESCALATES = [
    "pip install six",
    "pip3 install --user -r requirements.txt",
    "python3 -m pip install -e .",
    "python3 -m ensurepip",
    "pipx install black",
    "pipx run cowsay moo",
    "uv pip install ruff",
    "uv tool install ruff",
    "uv add httpx",
    "npm install",
    "npm i -g typescript",
    "yarn add react",
    "pnpm install",
    "cargo install ripgrep",
    "gem install rails",
    "go install golang.org/x/tools/gopls@latest",
    "bundle install",
    "deno install --global jsr:@std/http/file-server",
    "rustup component add clippy",
    "apt-get install -y jq",
    "apt-get update",
    "dpkg -i tool.deb",
    "git clone https://example.com/tool.git /opt/tool",
    "sudo make install",
    "cp tool /usr/local/bin/",
    "curl -fsSL https://get.example.sh | sh",
    "pip --version; pip install six",  # a query first, then a change: the change counts
    "echo $(pip list) && npm install",
    "bash -c 'pip install six'",
]

# Commands the rules send to the sandbox that only look: they do not escalate.
QUERIES = [
    "pip --version",
    "pip",
    "pip list",
    "pip3 show six",
    "pip freeze > requirements.txt",
    "python3 -m pip list --outdated",
    "uv pip list",
    "apt show curl",
    "apt-get -s",
    "dpkg -l",
    "echo $(pip --version)",
    "bash -c 'pip --version'",
]

# After an escalation: everything that may use what was installed follows it.
FOLLOWS = [
    "python3 -c 'import six'",
    "node -e 'require(\"left-pad\")'",
    "npx tsc --version",
    "./node_modules/.bin/eslint .",
    "rg --version",
    "ls",
    "ls -la node_modules",
    "git status",
    "make test",
    "echo hi",
    "cat /usr/local/lib/python3.11/dist-packages/six.py",  # a system path: the sandbox's own
    "cat /tmp/home/.local/bin/tool",
    "cat ~/.gitconfig | python3 -c 'import sys; print(len(sys.stdin.read()))'",
    "cat $(python3 -c 'import six; print(six.__file__)')",
    "cat ~/.gitconfig > copy",
    "cat < ~/.gitconfig",
    "find ~/notes -delete",
    "find ~/notes -name x -exec rm {} +",
    "ls ~/notes /etc",
    "cat $NOTES",
    f"cat {WORKSPACE}/README.md",
    "cd ~/notes && ls",
    "echo 'unclosed",
]

# After an escalation: reads of the user's own files outside the workspace stay on the host.
HOST_READS = [
    ("cat ~/.gitconfig", "~/.gitconfig"),
    ("ls -la $HOME/projects", "$HOME/projects"),
    ("ls ${HOME}", "${HOME}"),
    ("grep -rn TODO ~/notes | head -5", "~/notes"),
    ("cat /home/someone/todo.txt 2>/dev/null", "/home/someone/todo.txt"),
    ("diff ~/a.txt b.txt", "~/a.txt"),
    ("find ~/notes -name '*.md' | wc -l", "~/notes"),
    ("head -n 3 ~alice/plan.md", "~alice/plan.md"),
    ("tail -f /mnt/logs/app.log &", "/mnt/logs/app.log"),
]


@pytest.mark.parametrize("command", ESCALATES)
def test_changes_escalate(command: str) -> None:
    decision = decide(command)
    assert decision.mode == "sandbox" and decision.escalates, decision


@pytest.mark.parametrize("command", QUERIES)
def test_queries_run_in_the_sandbox_but_do_not_escalate(command: str) -> None:
    decision = decide(command)
    assert decision.mode == "sandbox" and not decision.escalates, decision


@pytest.mark.parametrize("command", FOLLOWS)
def test_after_an_escalation_later_commands_follow_it(command: str) -> None:
    decision = decide(command, escalation=SIX, workspace=WORKSPACE)
    assert (decision.mode, decision.rule, decision.reason) == ("sandbox", "sticky", STICKY_REASON)
    assert decide(command).mode == "local", "without the escalation it would run on the host"


@pytest.mark.parametrize(("command", "path"), HOST_READS)
def test_reads_of_the_users_files_stay_on_the_host(command: str, path: str) -> None:
    decision = decide(command, escalation=SIX, workspace=WORKSPACE)
    assert decision.to_dict() == {
        "mode": "local",
        "rule": "host-read",
        "reason": f"it only reads {path}, outside the workspace, which the sandbox cannot see",
    }


def test_the_workspace_is_shared_so_reads_in_it_follow_even_under_home() -> None:
    workspace = os.path.join(HOME, "proj")
    for command in ("cat ~/proj/README.md", f"ls {workspace}/src", "ls ~/proj"):
        decision = decide(command, escalation=SIX, workspace=workspace)
        assert decision.rule == "sticky", (command, decision)
    assert decide("cat ~/other/x", escalation=SIX, workspace=workspace).rule == "host-read"


def test_the_rules_still_decide_first_on_an_escalated_kernel() -> None:
    decision = decide("npm install", escalation=SIX, workspace=WORKSPACE)
    assert (decision.rule, decision.reason) == ("package-manager", "npm install installs packages")
    decision = decide("ls", requirements=True, escalation=SIX)
    assert decision.rule == "requirements"


def test_without_an_escalation_nothing_changes() -> None:
    for command in ("python3 -c 'import six'", "ls", "cat ~/.gitconfig"):
        assert decide(command, workspace=WORKSPACE) == LOCAL


def test_stickiness_off_decides_by_the_rules_alone_and_says_so() -> None:
    decision = decide("python3 -c 'import six'", escalation=SIX, sticky=False)
    assert decision.to_dict() == {
        "mode": "local",
        "rule": "default",
        "reason": f"{LOCAL.reason} (the kernel escalated by `pip install six`, but stickiness "
        "is off)",
    }
    assert decide("pip install x", escalation=SIX, sticky=False).rule == "package-manager"


def test_explain_reports_the_sticky_reason() -> None:
    assert explain("python3 -c 'import six'", escalation=SIX) == (
        f"sandbox: {STICKY_REASON} (rule: sticky)"
    )
    assert explain("python3 -c 'import six'").startswith("local: no sandbox rule matched")


def test_an_escalation_quotes_its_command_short_and_on_one_line() -> None:
    long = "pip install " + " ".join(f"package-{i}" for i in range(20))
    escalation = Escalation.of(long, decide(long))
    assert len(escalation.command) == 80 and escalation.command.endswith("\u2026")
    escalation = Escalation.of("cd app &&\n   npm   install", decide("cd app && npm install"))
    assert escalation.command == "cd app && npm install"
    assert (escalation.rule, escalation.reason) == (
        "package-manager",
        "npm install installs packages",
    )


def test_an_escalation_survives_a_record_and_refuses_garbage() -> None:
    assert Escalation.from_dict(SIX.to_dict()) == SIX
    assert SIX.to_dict() == {
        "command": "pip install six",
        "rule": "package-manager",
        "reason": "pip is a package manager",
    }
    for garbage in (None, "pip", {"command": 1, "rule": "x", "reason": "y"}, {}):
        assert Escalation.from_dict(garbage) is None
    unknown = Escalation("", "package-manager", "pip is a package manager")
    assert decide("ls", escalation=unknown).reason.startswith(
        "kernel escalated by a command before the server restarted"
    )
