"""A whole lesson through Debian's nginx terminating TLS, with the README's own server block.

``docs/nginx.conf`` is the block the README shows (checked verbatim); the test fills in its
placeholders (port, name, certificate, upstream) and runs it in a private nginx (its own prefix,
config and temp folders in tmp_path; /etc/nginx untouched) in front of a real server started with
``--trusted-proxies 127.0.0.1 --public-url https://127.0.0.1:<nginx port>``. Headless Chromium
then teaches over https + wss: the teacher's fake microphone reaches a student over WebRTC (media
goes straight to the server over UDP, signalling through nginx), a deck uploaded through nginx is
shown and its slide image loads on the student's phone, and a phone without WebRTC plays the
``/listen/...ogg`` fallback stream, whose bytes are read through nginx too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from browser import CHROMIUM, available, launch_args, pages_hear_audio
from groom.web.tls import ensure_self_signed
from servers import GroomServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_BLOCK = ROOT / "docs" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SPEECH = ROOT / "media" / "speech.wav"
DECK = ROOT / "media" / "sample-deck.pdf"


SLIDE = """() => {
  const img = document.querySelector('#board img'), box = document.getElementById('board');
  return {hidden: box.hidden, src: img ? img.currentSrc || img.src : '',
          complete: !!img && img.complete, width: img ? img.naturalWidth : 0};
}"""


def test_readme_shows_the_tested_nginx_block() -> None:
    block = NGINX_BLOCK.read_text()
    assert block.startswith("server {") and block.rstrip().endswith("}")
    assert block in (ROOT / "README.md").read_text(), "README's nginx block differs from docs/nginx.conf"
    for needed in ("proxy_pass http://127.0.0.1:8080;", "X-Forwarded-For", "X-Forwarded-Proto",
                   "proxy_set_header Host", "Upgrade $http_upgrade", "proxy_buffering off",
                   "client_max_body_size", "proxy_read_timeout"):
        assert needed in block, needed


def nginx_config(workdir: Path, port: int, upstream: int, cert: str, key: str) -> str:
    """docs/nginx.conf with its placeholders filled in, inside a minimal private main config."""
    block = NGINX_BLOCK.read_text()
    for old, new in (("listen 443 ssl", f"listen 127.0.0.1:{port} ssl"),
                     ("server_name groom.example.la;", "server_name 127.0.0.1;"),
                     ("/etc/letsencrypt/live/groom.example.la/fullchain.pem", cert),
                     ("/etc/letsencrypt/live/groom.example.la/privkey.pem", key),
                     ("http://127.0.0.1:8080;", f"http://127.0.0.1:{upstream};")):
        assert old in block, f"docs/nginx.conf lost its placeholder {old!r}"
        block = block.replace(old, new)
    assert "groom.example.la" not in block and ":8080" not in block
    temp = workdir / "temp"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / name).mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the key in tmp_path
    return f"""{user}worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{block}
}}
"""


@contextlib.contextmanager
def running_nginx(workdir: Path, port: int, upstream: int, cert: str, key: str) -> Iterator[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "nginx.conf").write_text(nginx_config(workdir, port, upstream, cert, key))
    log_path = workdir / "nginx.stderr"
    command = [NGINX, "-e", "stderr", "-p", str(workdir), "-c", "nginx.conf",
               "-g", f"daemon off; pid {workdir}/nginx.pid; error_log stderr;"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen: {log_path.read_text()[-3000:]}")
                time.sleep(0.05)
        yield workdir
    finally:
        # Master and workers share a process group of their own: nothing is left behind.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[GroomServer, dict[str, Any], str, Path]]:
    """A demo server behind nginx: (server, demo JSON, https base URL, nginx folder)."""
    if not Path(NGINX).exists():
        pytest.skip("needs nginx (apt-get install nginx)")
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    cert, key = ensure_self_signed(tmp_path, "127.0.0.1")
    srv = GroomServer(tmp_path / "groom", args=(
        "--trusted-proxies", "127.0.0.1", "--public-url", base,
        "--join-attempts-per-minute", "1000"))
    srv.start("--demo", "--json")
    try:
        info = srv.demo_info()
        with running_nginx(tmp_path / "nginx", port, srv.port, cert, key) as workdir:
            yield srv, info, base, workdir
    finally:
        srv.stop()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=launch_args(SPEECH) + ["--ignore-certificate-errors"])
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Browser, **options: Any) -> BrowserContext:
    return await browser.new_context(locale="en-US", ignore_https_errors=True, **options)


async def connected(page: Page) -> None:
    await page.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)
    await page.wait_for_function(
        "() => window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
        timeout=15000)


@pytest.mark.browser
@pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium")
@pytest.mark.timeout(120)
async def test_a_lesson_through_nginx(proxied: Any) -> None:
    srv, info, base, workdir = proxied
    assert info["student_url"].startswith(base + "/join/")
    errors: list[str] = []
    async with chromium() as browser:
        # The teacher logs in and opens the lesson over https; the page is told wss://.
        t_context = await new_context(browser, viewport={"width": 1280, "height": 1000})
        response = await t_context.request.post(base + "/api/login", data=info["teacher_login"])
        assert response.ok, await response.text()
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        cookie = next(c for c in await t_context.cookies() if c["name"] == "groom_session")
        assert cookie["secure"] and cookie["httpOnly"]
        teacher = await t_context.new_page()
        teacher.on("pageerror", lambda exc: errors.append(f"teacher: {exc}"))
        teacher.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        page_response = await teacher.goto(f"{base}/lessons/{info.get('lesson_id', 1)}/teach?lang=en")
        assert page_response is not None and page_response.ok
        assert (await page_response.all_headers())["strict-transport-security"] == "max-age=31536000"
        ws_url = await teacher.evaluate(
            "() => JSON.parse(document.getElementById('config').textContent).ws")
        assert ws_url == f"wss://127.0.0.1:{base.rsplit(':', 1)[1]}/ws"
        await teacher.click("#start")
        await connected(teacher)
        assert await teacher.evaluate("() => window.groom.ws.url") == ws_url

        # A student joins with the printed link (through nginx) and hears the teacher.
        s_context = await new_context(browser, viewport={"width": 360, "height": 740})
        student = await s_context.new_page()
        student.on("pageerror", lambda exc: errors.append(f"student: {exc}"))
        await student.goto(info["student_url"] + "?lang=en")
        await student.fill("#name", "Through Nginx")
        await student.click("#go")
        await connected(student)
        heard, first, later = await pages_hear_audio([student], timeout=15)
        assert heard, f"no audio reached the student: {first} -> {later}"

        # A deck uploaded through nginx, shown; the student's phone loads the slide image.
        await teacher.set_input_files("#deck-file", str(DECK))
        await teacher.click("#upload-go")
        await teacher.wait_for_function(
            "() => !document.getElementById('upload-go').disabled", timeout=40000)
        assert (await teacher.text_content("#upload-status") or "").startswith("Ready"), \
            await teacher.text_content("#upload-status")
        await teacher.click("#show-deck")
        await student.wait_for_function(
            f"() => {{ const s = ({SLIDE})(); return !s.hidden && s.complete && s.width > 0 "
            "&& s.src.indexOf('/slides/') > 0; }", timeout=15000)
        slide = await student.evaluate(SLIDE)
        assert slide["src"].startswith(base + "/slides/"), slide

        # A phone without WebRTC plays the Ogg fallback stream through nginx.
        f_context = await new_context(browser)
        await f_context.add_init_script("delete window.RTCPeerConnection;")
        old_phone = await f_context.new_page()
        old_phone.on("pageerror", lambda exc: errors.append(f"old phone: {exc}"))
        await old_phone.goto(info["student_url"] + "?lang=en")
        await old_phone.fill("#name", "Old Phone")
        await old_phone.click("#go")
        await old_phone.wait_for_function(
            "() => { const a = document.getElementById('audio'); "
            "return a.src.indexOf('/listen/') > 0 && a.currentTime > 1; }", timeout=15000)
        listen_url = await old_phone.evaluate("() => document.getElementById('audio').src")
        assert listen_url.startswith(base + "/listen/") and listen_url.endswith(".ogg")
        ogg = await read_stream(listen_url, 16 * 1024)
        assert ogg[:4] == b"OggS" and b"OpusHead" in ogg[:200] and ogg.count(b"OggS") > 5, ogg[:64]
        await f_context.close()

        await teacher.click("#end")
        await student.wait_for_function("() => document.body.dataset.state === 'ended'",
                                        timeout=10000)
        await s_context.close()
        await t_context.close()
    assert not errors, errors

    # Signalling, pages and streams all went through nginx.
    access = (workdir / "access.log").read_text()
    assert '"GET /ws HTTP/1.1" 101' in access, access[-2000:]
    assert "GET /listen/" in access and "GET /slides/" in access
    assert "POST /api/classes/" in access  # the deck upload
    # The server saw the client nginx named (loopback here), never a missing address.
    clients = {line.get("client") for line in srv.log_lines() if line.get("event") == "request"}
    assert clients == {"127.0.0.1"}, clients


async def read_stream(url: str, size: int) -> bytes:
    """The first ``size`` bytes of a never-ending stream, read through nginx."""
    data = b""
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(url, ssl=False) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
            while len(data) < size:
                chunk = await resp.content.read(size - len(data))
                if not chunk:
                    break
                data += chunk
    return data
