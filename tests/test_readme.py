"""The README's shell examples run as written against a real ``emr-hub serve`` with the demo.

Every ``sh`` block of the README is run, in order, in one bash session (so ``TOKEN`` set in the
quick start serves the later blocks), from a folder that looks like the repository's (``.venv``,
``examples``) and holds the files the README asks to save (``visit.json``). Only what cannot
run here is left out: ``make`` (it would install and serve in the foreground) and ``docker``.
The two substitutions are the server's address for ``http://127.0.0.1:8000`` and the secret
``emr-hub demo`` printed for the README's ``<secret printed by emr-hub demo>``. Each ``curl``
reports its HTTP status; every answer must be a success except the one the README says is
refused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.processes import EMR_HUB, ApiServer, cli_env

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_BASE = "http://127.0.0.1:8000"
SECRET_PLACEHOLDER = "<secret printed by emr-hub demo>"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
SAVE_AS = re.compile(r"save this as `([\w.-]+)`")

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash"
)


def runnable_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(position, code) of each sh block that can run here."""
    for match in BLOCK.finditer(text):
        language, code = match.groups()
        first = code.strip().split()[0] if code.strip() else ""
        if language == "sh" and first not in ("make", "docker"):
            yield match.start(), code


def files_to_save(text: str) -> dict[str, str]:
    """The blocks the README asks the reader to save, by file name: a block that follows
    "save this as `NAME`"."""
    files = {}
    for match in SAVE_AS.finditer(text):
        block = BLOCK.search(text, match.end())
        assert block is not None, f"nothing to save after {match.group(0)}"
        files[match.group(1)] = block.group(2)
    return files


def test_the_readme_has_the_examples_this_test_runs() -> None:
    text = README.read_text()
    blocks = [code for _, code in runnable_blocks(text)]
    assert len(blocks) >= 6
    assert any("$import-xml130" in code for code in blocks)
    assert any(SECRET_PLACEHOLDER in code for code in blocks)
    assert "visit.json" in files_to_save(text)


def test_every_shell_example_of_the_readme_runs_as_written(
    tmp_path: Path, database_url: str
) -> None:
    text = README.read_text()
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (work / "examples").symlink_to(REPO / "examples")
    for name, content in files_to_save(text).items():
        (work / name).write_text(content)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(tmp_path, database_url, EMR_HUB_BASE_URL=base)
    demo = subprocess.run(
        [EMR_HUB, "demo"], env=env, capture_output=True, text=True, timeout=180, check=True
    )
    secret = re.search(r"client bach-mai \S+ secret: (\S+)", demo.stdout)
    assert secret, demo.stdout
    server = ApiServer(env, port, tmp_path / "server.log")
    try:
        server.wait_ready()
        script = [
            "set -eu",
            # each curl says its status on stderr, apart from what the example prints
            "curl() { command curl -sS --write-out '%{stderr}STATUS %{http_code}\\n' \"$@\"; }",
        ]
        for number, (_, code) in enumerate(runnable_blocks(text)):
            code = code.replace(README_BASE, base).replace(SECRET_PLACEHOLDER, secret.group(1))
            script += [f"echo 'BLOCK {number}' >&2", code]
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.stop()
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    statuses: dict[int, list[int]] = {}
    current: list[int] = []
    for line in done.stderr.splitlines():
        if line.startswith("BLOCK "):
            current = statuses.setdefault(int(line.split()[1]), [])
        elif line.startswith("STATUS "):
            current.append(int(line.split()[1]))
    blocks = [code for _, code in runnable_blocks(text)]
    assert len(statuses) == len(blocks)
    for number, code in enumerate(blocks):
        expected = [404 if "(404)" in step else 200 for step in _curl_steps(code)]
        assert statuses[number] == expected, f"block {number}:\n{code}\n{done.stdout[-2000:]}"
    assert (work / "letter.xml").read_bytes().startswith(b"<?xml")
    assert b"<LOAIHOSO>XML14</LOAIHOSO>" in (work / "slip.xml").read_bytes()


def _curl_steps(code: str) -> list[str]:
    """Each curl of a block with the comment lines just before it (where the README says what
    answer to expect)."""
    steps, comments = [], []
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
        elif stripped.startswith("curl ") or re.match(r"^\w+=\$\(curl ", stripped):
            steps.append(" ".join(comments))
            comments = []
        elif not stripped:
            comments = []
    return steps
