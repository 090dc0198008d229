"""One error shape for the whole server.

Domain code raises ``AppError`` with a stable ``code``, an English message template and its
parameters; the error middleware turns it into ``{"error": {...}}`` JSON on the API, or into a
translated message on a page. The template is also the msgid in the translation catalog.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 400

    def __init__(self, code: str, message: str, status: int | None = None, **params: Any) -> None:
        super().__init__(message.format(**params) if params else message)
        self.code = code
        self.template = message
        self.params = params
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.params:
            body["details"] = self.params
        return {"error": body}


def not_found(what: str = "item") -> AppError:
    return AppError("not_found", "Not found: {what}", status=404, what=what)


def forbidden() -> AppError:
    return AppError("forbidden", "You are not allowed to do this.", status=403)


def unauthorized() -> AppError:
    return AppError("unauthorized", "Please log in.", status=401)
