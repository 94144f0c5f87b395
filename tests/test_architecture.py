"""Imports flow one way: api -> serving -> the parts (docs/architecture.md). Read from the source, no imports run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the parts below the serving layer: none of them may reach up into serving or the HTTP layer
PARTS = ["openai_types.py", "parsers", "stop.py", "limits.py", "request_fields.py", "sgt", "upstream.py"]
PARTS += ["metrics.py", "tracing.py", "errors.py", "settings.py", "tensor_archive.py"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def _reaches(names: set[str], *prefixes: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_serving_knows_nothing_of_flask_or_the_http_layer() -> None:
    assert _reaches(_imports(ROOT / "proxy" / "serving"), "flask", "werkzeug", "proxy.api", "proxy.app") == []


def test_the_parts_never_import_serving_or_the_http_layer() -> None:
    for part in PARTS:
        names = _imports(ROOT / "proxy" / part)
        assert _reaches(names, "proxy.serving", "proxy.api", "proxy.app") == [], part
        if part != "tracing.py":  # its view decorator reads the request's headers (a lazy import)
            assert _reaches(names, "flask", "werkzeug") == [], part


def test_output_protection_imports_no_proxy_code() -> None:
    assert _reaches(_imports(ROOT / "sgop"), "proxy") == []
