"""The Lao catalog covers every string a person can see, and parses with Babel.

Msgids are collected from the code itself: ``_("...")`` in templates and Python, and the message
template of every ``AppError(...)``, ``DeckError(...)`` (slide uploads) and ``Refusal(...)`` (the
page worker, whose templates reach the teacher through DeckError) raised anywhere in ``groom/``. A
string added without a Lao translation fails here, naming the string.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "web" / "templates"
PO = ROOT / "web" / "translations" / "lo.po"

# _("..."), _('...') in jinja templates; the first argument only.
_TEMPLATE_CALL = re.compile(r"""\b_\(\s*(?P<q>["'])(?P<s>(?:\\.|(?!(?P=q)).)*)(?P=q)""", re.S)


def catalog() -> dict[str, str]:
    with PO.open("rb") as f:
        cat = read_po(f, locale="lo")
    return {str(m.id): str(m.string or "") for m in cat if m.id}


def template_msgids() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(TEMPLATES.rglob("*.html")):
        for m in _TEMPLATE_CALL.finditer(path.read_text(encoding="utf-8")):
            text = m.group("s").replace("\\" + m.group("q"), m.group("q"))
            found.setdefault(text, str(path.relative_to(ROOT)))
    return found


def _literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


# Exceptions whose second argument is an English message template shown to a person.
_ERROR_CLASSES = {"AppError", "DeckError", "Refusal"}


def python_msgids() -> dict[str, str]:
    """Second argument of ``AppError``/``DeckError``/``Refusal`` and first of ``_(...)`` calls
    in groom/**/*.py."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "groom").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            text = None
            if name in _ERROR_CLASSES:
                if len(node.args) >= 2:
                    text = _literal(node.args[1])
                for kw in node.keywords:
                    if kw.arg in ("message", "template"):
                        text = _literal(kw.value)
            elif name == "_" and node.args:
                text = _literal(node.args[0])
            if text:
                found.setdefault(text, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_po_parses_with_babel_and_declares_utf8() -> None:
    with PO.open("rb") as f:
        cat = read_po(f, locale="lo")
    assert "charset=UTF-8" in PO.read_text(encoding="utf-8")
    assert len(cat) > 50
    # Compiles to a .mo the way the server does it.
    from groom.core.i18n import load_catalogs
    assert "lo" in load_catalogs()


def test_extractors_find_known_strings() -> None:
    assert "Log in" in template_msgids()
    assert "Wrong username or password." in python_msgids()
    assert "Not found: {what}" in python_msgids()
    assert "This presentation file is damaged." in python_msgids()  # DeckError, deck_import.py
    assert "This PDF has no pages." in python_msgids()  # Refusal, rasterize.py


def test_every_template_string_has_lao() -> None:
    cat = catalog()
    missing = {s: where for s, where in template_msgids().items() if not cat.get(s)}
    assert not missing, f"no Lao translation for: {missing}"


def test_every_error_message_has_lao() -> None:
    cat = catalog()
    missing = {s: where for s, where in python_msgids().items() if not cat.get(s)}
    assert not missing, f"no Lao translation for: {missing}"


def test_translations_keep_their_placeholders() -> None:
    """A translation that drops or renames ``{name}`` would crash or lie when formatted."""
    placeholder = re.compile(r"\{(\w*)\}")
    bad = {}
    for msgid, msgstr in catalog().items():
        if msgstr and set(placeholder.findall(msgid)) != set(placeholder.findall(msgstr)):
            bad[msgid] = msgstr
    assert not bad, bad


def test_lao_is_the_default_and_english_is_chosen_by_header() -> None:
    from groom.core.i18n import load_catalogs, translator
    cats = load_catalogs()
    assert translator(cats, "lo")("Log in") != "Log in"
    assert translator(cats, "en")("Log in") == "Log in"
