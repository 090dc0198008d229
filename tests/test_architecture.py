"""The package layout is the architecture: these tests keep it that way.

Read from the source's own imports (no import is executed): which subpackage of ``groom`` may
import which, that no modules import each other in a loop, and that the per-packet media path
knows nothing of the office or of HTTP. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

GROOM = Path(__file__).resolve().parent.parent / "groom"

# Each layer may import the layers listed for it, and nothing above it.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "audio": {"core"},
    "board": {"core"},
    "office": {"core"},
    "recordings": {"core", "audio"},
    "live": {"core", "audio", "board", "recordings"},
    "web": {"core", "audio", "board", "recordings", "live", "office"},
    "": {"core", "audio", "board", "recordings", "live", "office", "web"},  # cli, __main__
}

# The modules that run for every 20 ms frame or every packet sent to a student.
HOT_PATH = {"groom.live.mixer", "groom.live.tiers", "groom.live.sender", "groom.live.fallback",
            "groom.audio.packets", "groom.audio.ogg", "groom.recordings.recorder"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(GROOM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the groom modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    modules = {_module_name(p): p for p in GROOM.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem
                           for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else ""


def test_layers_import_only_downward() -> None:
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            source, dest = _layer(module), _layer(target)
            if dest != source and dest and dest not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_media_hot_path_knows_no_office_or_http() -> None:
    graph = _imports()
    reach: set[str] = set()
    todo = list(HOT_PATH)
    while todo:
        module = todo.pop()
        if module in reach:
            continue
        reach.add(module)
        todo.extend(graph[module])
    assert HOT_PATH <= set(graph), HOT_PATH - set(graph)
    bad = sorted(m for m in reach if _layer(m) in ("office", "web"))
    assert not bad, f"the hot path reaches {bad}"
