"""Running ffmpeg for the recordings: which binary, at what priority, for how long at most.

Its own module because both kinds of output are made with it, the listening files
(``postprocess.py``) and the video of the slides (``video.py``), and it is the one place that
decides how ffmpeg runs beside live lessons: under ``nice -n 19``, with a timeout, and never left
behind when the job is cancelled.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

FFMPEG_TIMEOUT_S = 1800.0


class FfmpegError(RuntimeError):
    pass


def ffmpeg_exe() -> str:
    import imageio_ffmpeg
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def run_ffmpeg(stream: Any, exe: str, timeout: float = FFMPEG_TIMEOUT_S) -> None:
    """Run one ffmpeg-python graph as a low-priority subprocess; raise with its stderr tail."""
    if shutil.which(exe) is None:  # else ``nice`` would report it, less clearly
        raise FfmpegError(f"ffmpeg not found: {exe}")
    args = (stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error")
            .overwrite_output().compile(cmd=exe))
    nice = shutil.which("nice")
    if nice:
        args = [nice, "-n", "19", *args]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:  # timeout or cancellation: never leave ffmpeg behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        raise FfmpegError(f"ffmpeg exited with {proc.returncode}: {tail}")
