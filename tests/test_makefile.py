"""The two commands: `make run` installs only the hub and serves on PORT with a base URL to
match; `make test` adds the test tools. Checked on make's dry run against a venv that does not
exist yet, so every step a fresh clone would take is printed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(tmp_path: Path, target: str, *variables: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_run_installs_the_hub_without_the_test_tools(tmp_path: Path) -> None:
    steps = dry_run(tmp_path, "run")
    installs = [step for step in steps if "pip install" in step]
    assert installs and not any("[dev]" in step for step in installs)
    assert all("--quiet" not in step for step in installs)  # pip shows its progress
    assert any(step.endswith("pip install --progress-bar on -e .") for step in installs)


def test_make_test_adds_the_test_tools(tmp_path: Path) -> None:
    steps = dry_run(tmp_path, "test")
    assert any("pip install" in step and "'.[dev]'" in step for step in steps)
    assert any("pytest" in step for step in steps)


def test_port_sets_the_listening_port_and_the_base_url(tmp_path: Path) -> None:
    steps = dry_run(tmp_path, "run", "PORT=8010")
    (serve,) = [step for step in steps if " serve " in step]
    assert serve.endswith("serve --host 127.0.0.1 --port 8010")
    for command in ("migrate", "demo", "serve"):
        (step,) = [s for s in steps if f"emr-hub {command}" in s]
        # the shell keeps a base URL the user set, else derives it from the port
        assert step.startswith('EMR_HUB_BASE_URL="${EMR_HUB_BASE_URL:-http://127.0.0.1:8010}" ')


def test_the_base_url_the_shell_derives(tmp_path: Path) -> None:
    steps = dry_run(tmp_path, "run", "PORT=8010")
    (serve,) = [step for step in steps if " serve " in step]
    prefix = serve.split(" ", 1)[0]
    for given, expected in (("", "http://127.0.0.1:8010"), ("https://hub.vn", "https://hub.vn")):
        env = {"PATH": "/usr/bin:/bin", **({"EMR_HUB_BASE_URL": given} if given else {})}
        shown = subprocess.run(
            ["sh", "-c", f"{prefix} sh -c 'echo \"$EMR_HUB_BASE_URL\"'"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout.strip() == expected


def test_make_run_starts_the_demo_wallet_and_points_the_hub_at_it(tmp_path: Path) -> None:
    steps = dry_run(tmp_path, "run", "PORT=8010", "WALLET_PORT=8095")
    (receiver,) = [step for step in steps if "wallet_receiver.py" in step]
    assert "--port 8095" in receiver and '--trust "${EMR_HUB_BASE_URL:-http://127.0.0.1:8010}"' in (
        receiver + " " + steps[steps.index(receiver) + 1]
    )
    for command in ("migrate", "demo", "serve"):
        (step,) = [s for s in steps if f"emr-hub {command}" in s]
        assert 'EMR_HUB_WALLET_URL="${EMR_HUB_WALLET_URL-http://127.0.0.1:8095/intake}"' in step
    alone = dry_run(tmp_path, "run", "WALLET=off")
    assert not any("wallet_receiver.py" in s or "EMR_HUB_WALLET_URL" in s for s in alone)
