#!/usr/bin/env python3
"""Weigh the first load of the student page: HTML + JS + CSS, gzip-compressed, as JSON.

    python scripts/page_weight.py                      # start a demo server, weigh what it serves
    python scripts/page_weight.py http://host/join/CODE   # weigh a running server's page
    python scripts/page_weight.py --files              # no server: render the template from files

A 2G phone pays for every byte, so the budget is 30 KB compressed (the issue), aim ~12 KB. Each
file is compressed on its own with gzip level 6 (the usual web server setting). The exit status
is 1 when the total is over budget.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 30 * 1024
LEVEL = 6
ASSETS = re.compile(r'<(?:script[^>]*\ssrc|link[^>]*rel="stylesheet"[^>]*\shref)="([^"]+)"')


def weigh(name: str, data: bytes) -> dict[str, Any]:
    return {"path": name, "bytes": len(data), "gzip_bytes": len(gzip.compress(data, LEVEL, mtime=0))}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def from_server(url: str) -> list[dict[str, Any]]:
    html = fetch(url)
    files = [weigh(url, html)]
    for ref in ASSETS.findall(html.decode("utf-8")):
        files.append(weigh(ref, fetch(urljoin(url, ref))))
    return files


def from_files() -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from groom.core.config import WEB_DIR
    from groom.web.plumbing import make_jinja
    from groom.web.static import StaticFiles

    static = StaticFiles(WEB_DIR / "static")
    html = make_jinja(static).get_template("student.html").render(
        _=lambda message, **params: message.format(**params) if params else message,
        lang="lo", languages={"lo": "ລາວ", "en": "English"}, viewer=None, csrf_token="",
        csrf_field="csrf", path_qs="/join/ABCD2345",
        lesson={"title": "ບົດທີ 5: ການອ່ານ (Reading)", "class_name": "ປ.4 ກ",
                "teacher_name": "ອາຈານ ມະນີວັນ"},
        join={"code": "ABCD2345"}, class_name="ປ.4 ກ", ws_url="ws://127.0.0.1:8080/ws").encode()
    files = [weigh("student.html (rendered from files)", html)]
    for ref in ASSETS.findall(html.decode("utf-8")):
        name = ref.split("?")[0].rsplit("/", 1)[-1]
        files.append(weigh(ref, (WEB_DIR / "static" / name).read_bytes()))
    return files


def with_demo_server() -> tuple[str, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="groom-weight-") as data_dir:
        proc = subprocess.Popen([sys.executable, "-m", "groom", "demo", "--json", "--port", "0",
                                 "--data-dir", data_dir], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{") and "student_url" in line:
                    url = json.loads(line)["student_url"]
                    return url, from_server(url)
            raise SystemExit("the demo server printed no student_url")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="a running server's student page URL")
    parser.add_argument("--files", action="store_true", help="render the template from files")
    args = parser.parse_args()
    if args.url:
        source, url, files = "server", args.url, from_server(args.url)
    elif args.files:
        source, url, files = "files", None, from_files()
    else:
        source = "demo server"
        url, files = with_demo_server()
    total = sum(f["gzip_bytes"] for f in files)
    print(json.dumps({"source": source, "url": url, "gzip_level": LEVEL, "files": files,
                      "total_bytes": sum(f["bytes"] for f in files),
                      "total_gzip_bytes": total, "budget_gzip_bytes": BUDGET,
                      "within_budget": total <= BUDGET}, ensure_ascii=False, indent=1))
    return 0 if total <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
