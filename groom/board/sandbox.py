"""The box that untrusted slide files are opened in: no network, no data folder, no secrets.

LibreOffice converting a PPTX/ODP runs macros' worth of code on a file a stranger may have made,
and the page worker (``rasterize.py``) feeds pdfium a PDF from anyone with a teacher's login. Both
run as the server's user, who can read ``data/secret.key``, the database and every recording, and
reach PostgreSQL on loopback. So they are started inside bubblewrap (Debian's ``bubblewrap``):

- ``--unshare-all``: own network (nothing but a down loopback: no way out, no database), own
  process ids (the server's ``/proc/<pid>/environ`` is not visible), IPC, hostname;
- the whole system read-only, ``/tmp`` and ``/run`` empty (no database or other Unix sockets),
  the data folder replaced by an empty one, and only the one job's staging folder writable;
- an empty environment, bwrap's own included (``GROOM_SECRET`` or ``GROOM_DATABASE_URL`` are not
  inherited);
- ``--die-with-parent`` and a session of its own, so killing the group ends it all.

``wrap`` turns a command into its sandboxed form. Without a working ``bwrap`` it raises
``Unavailable``: the caller refuses office files and says why (never running them unboxed
silently); ``mode="off"`` (``--deck-sandbox off``) is the operator's explicit choice to run
without it. See docs/operations.md.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

_checked = False
_BWRAP: Optional[str] = None  # path of a bwrap that was seen to work
_lock = threading.Lock()

PATH = "/usr/local/bin:/usr/bin:/bin"


class Unavailable(Exception):
    """``mode`` asks for the sandbox and ``bwrap`` is missing or cannot run here."""


EMPTIED = (Path("/tmp"), Path("/run"))


def _code_paths() -> list[Path]:
    """What the boxed commands need of this installation that an emptied /tmp or /run would hide:
    the interpreter and its virtualenv, and the package (the page worker is one of its files).
    A checkout or virtualenv under /tmp (a CI clone) is the case this is for."""
    package_root = Path(__file__).resolve().parents[2]  # a checkout, or site-packages
    wanted = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
              Path(sys.executable).resolve().parent, package_root}
    hidden = [p for p in wanted if any(p.is_relative_to(e) for e in EMPTIED)]
    return sorted(p for p in hidden if not any(p != q and p.is_relative_to(q) for q in hidden))


def _args(bwrap: str, data_dir: Path, workdir: Path) -> list[str]:
    data_dir, workdir = data_dir.resolve(), workdir.resolve()
    code = [arg for path in _code_paths() for arg in ("--ro-bind", str(path), str(path))]
    # ``env -i`` first: bwrap's own process (pid 1 inside) would otherwise keep the server's
    # environment, readable in /proc/1/environ; --clearenv only clears the command's.
    # Mount order matters: the code comes back (read-only) after /tmp and /run are emptied, and the
    # data folder is emptied after that, so a data folder inside the checkout stays hidden.
    return ["/usr/bin/env", "-i", bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", str(workdir),
            "--setenv", "LANG", "C.UTF-8",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/run", *code, "--tmpfs", str(data_dir),
            "--bind", str(workdir), str(workdir), "--"]


def available() -> bool:
    """Whether bwrap is installed and can make its namespaces here (checked once; blocking).

    Some containers and hardened kernels forbid user namespaces to unprivileged users; then
    bwrap exists but fails, which counts as unavailable."""
    global _checked, _BWRAP
    with _lock:
        if not _checked:
            found = shutil.which("bwrap")
            if found is not None:
                try:
                    with tempfile.TemporaryDirectory(prefix="groom-sandbox-") as tmp:
                        work = Path(tmp) / "data" / "work"
                        work.mkdir(parents=True)
                        ok = subprocess.run(_args(found, work.parent, work) + ["true"],
                                            stdin=subprocess.DEVNULL, capture_output=True,
                                            timeout=20).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
                if not ok:
                    log.warning("bwrap is installed but cannot run here (user namespaces?)")
                    found = None
            _BWRAP, _checked = found, True
        return _BWRAP is not None


def wrap(argv: list[str], *, data_dir: Path, workdir: Path, mode: str,
         office: bool = False) -> list[str]:
    """``argv`` as run inside the sandbox: only ``workdir`` writable, ``data_dir`` hidden.

    ``mode`` is ``settings.deck_sandbox``: "off" returns ``argv`` unchanged. With "bwrap" and
    no working bwrap, raises ``Unavailable`` for office files (``office=True``); the page
    worker then runs under its own limits only, which the server logged at start.
    """
    if mode == "off":
        return list(argv)
    if not available():
        if office:
            raise Unavailable("bwrap is not available")
        return list(argv)
    assert _BWRAP is not None
    return _args(_BWRAP, data_dir, workdir) + list(argv)


def check_at_start(mode: str) -> None:
    """Say at start, once, what the server will do with untrusted slide files."""
    if mode == "off":
        log.warning("deck sandbox is off: LibreOffice and the page worker run with the server's "
                    "rights (--deck-sandbox off)")
    elif not available():
        log.warning("bwrap (Debian package bubblewrap) is missing or cannot run: PPTX/ODP uploads "
                    "are refused and PDFs are drawn without the sandbox")
