"""Headless Chromium for tests: Debian's /usr/bin/chromium driven by Playwright.

    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 390, "height": 844})

Never runs ``playwright install``: the browser is the distribution's, found by path. Each launch
gets a fresh profile folder (removed afterwards), fake media devices that need no permission
prompt, and optionally a WAV file as the microphone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = os.environ.get("GROOM_CHROMIUM", "/usr/bin/chromium")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required"]


def available() -> bool:
    return Path(CHROMIUM).exists()


def launch_args(fake_audio: Optional[Path] = None) -> list[str]:
    args = list(ARGS)
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}")
    return args


@contextlib.asynccontextmanager
async def chromium(fake_audio: Optional[Path] = None, **context_options: object
                   ) -> AsyncIterator[BrowserContext]:
    """A persistent browser context on a fresh user-data folder (Playwright's way to pass one).

    ``context_options`` go to ``launch_persistent_context`` (e.g. ``viewport``, ``locale``).
    """
    profile = tempfile.mkdtemp(prefix="groom-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=launch_args(fake_audio),
                **context_options)  # type: ignore[arg-type]
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def chromium_browser(fake_audio: Optional[Path] = None, *, executable: Optional[Path] = None,
                           extra_args: tuple[str, ...] = ()) -> AsyncIterator[Browser]:
    """A plain ``Browser`` for several isolated contexts (e.g. a teacher and students).

    Playwright gives a launched browser a fresh temporary profile of its own and refuses a
    ``--user-data-dir`` argument, so none is passed here. ``executable``: another way to start
    Chromium, e.g. the network lab's wrapper that runs it inside a namespace.
    """
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable or CHROMIUM, headless=True,
                                           args=[*launch_args(fake_audio), *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


# What a live page has received: its audio inbound-rtp packets and energy (null before media).
INBOUND = """async () => {
  const live = window.groom;
  if (!live || !live.pc) return null;
  const report = await live.pc.getStats();
  let found = null;
  report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") found = s; });
  return found && {packets: found.packetsReceived || 0, energy: found.totalAudioEnergy || 0,
                   lost: found.packetsLost || 0, state: live.pc.connectionState};
}"""


async def pages_hear_audio(pages: list[Page], timeout: float = 20.0) -> tuple[bool, list[Any], list[Any]]:
    """Wait until every page has received 10+ more audio packets carrying energy (speech, not
    silence). Returns (all heard, first figures, last figures) for the assertion message."""
    first = [await page.evaluate(INBOUND) for page in pages]
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(1)
        later = [await page.evaluate(INBOUND) for page in pages]
        ok = [b is not None and b["packets"] > (a["packets"] if a else 0) + 10 and b["energy"] > 0
              for a, b in zip(first, later)]
        if all(ok) or time.monotonic() > deadline:
            return all(ok), first, later
