"""What a user installs is what runs: one migration head, and a wheel that serves every page.

The wheel test builds the project's wheel, installs it (without dependencies) into a folder of
its own, and runs ``groom demo`` from an unrelated working directory with only that folder ahead
of the test venv's packages: the pages, static files, translations and migrations must all come
from inside the wheel, never from this checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_migrations_have_one_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "groom" / "core" / "migrations"))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"alembic heads: {heads}"


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_built_wheel_serves_pages_from_any_folder(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--disable-pip-version-check", str(ROOT), "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("groom-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                "--disable-pip-version-check", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import groom; print(groom.__file__)"],
                           capture_output=True, text=True, env=env, cwd=elsewhere)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr

    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "groom", "demo", "--json", "--port", str(port),
                             "--data-dir", str(elsewhere / "data")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=elsewhere)
    try:
        info = _wait_for_demo(tmp_path / "server.log", proc)
        status, page = _get(info["student_url"])
        assert status == 200
        html = page.decode()
        assert "ເຂົ້າ" in html or "ຫ້ອງ" in html, "the student page is not in Lao"
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert assets, "the student page links no static files"
        for asset in assets:
            status, body = _get(f"http://127.0.0.1:{port}{asset}")
            assert status == 200 and body, asset
        status, _ = _get(f"http://127.0.0.1:{port}/login?lang=en")
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _wait_for_demo(log_path: Path, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("groom demo exited: " + log_path.read_text()[-3000:])
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and "student_url" in line:
                links: dict[str, str] = json.loads(line)
                return links
        time.sleep(0.2)
    raise AssertionError("groom demo printed no links: " + log_path.read_text()[-3000:])
