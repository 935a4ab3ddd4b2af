"""The README's generated tables: `python -m dgate.docs` prints them, `--write README.md` updates the file.

Each table sits in the README between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; tests/test_docs.py fails
when a block differs from what this module generates, so a new setting or error code reaches the README.
- settings: every `FrontendSettings` field (its `DGATE_*` variable, default and `description=`);
- errors: every OpenAI error the frontend answers, read from its source: each `OpenAIError(...)` call
  with a literal status (the HTTP exceptions' codes come from `frontend/errors.py` at run time).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic.fields import FieldInfo


def _value(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def settings_table() -> str:
    from dgate.frontend.settings import FrontendSettings

    prefix = FrontendSettings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in FrontendSettings.model_fields.items():
        assert isinstance(info, FieldInfo)
        if not info.description:
            raise ValueError(f"FrontendSettings.{name} has no description=: the README documents every setting")
        rows.append(f"| `{(prefix + name).upper()}` | {_value(info.default)} | {info.description} |")
    return "\n".join(rows)


@dataclass
class _ErrorRow:
    status: int
    type: str
    code: str | None
    causes: set[str] = field(default_factory=set)


def _literal(node: ast.expr | None) -> object:
    try:
        return None if node is None else ast.literal_eval(node)
    except ValueError:
        return _Unknown


class _Unknown:
    pass


def _isinstance_class(test: ast.expr) -> str | None:
    """`X` for an `if isinstance(exc, X):` test."""
    if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "isinstance"
            and len(test.args) == 2 and isinstance(test.args[1], ast.Name)):
        return test.args[1].id
    return None


class _ErrorCalls(ast.NodeVisitor):
    """Every `OpenAIError(status, message, type=..., code=...)` call with a literal status."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.found: list[tuple[int, str, str | None, str]] = []
        self._functions: list[str] = []
        self._classes: list[str | None] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._classes.append(_isinstance_class(node.test))
        for child in node.body:
            self.visit(child)
        self._classes.pop()
        for child in node.orelse:
            self.visit(child)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Name) and node.func.id == "OpenAIError" and node.args):
            return
        status = _literal(node.args[0])
        keywords = {k.arg: k.value for k in node.keywords}
        kind = _literal(keywords.get("type")) if "type" in keywords else "invalid_request_error"
        code = _literal(keywords.get("code"))
        if not isinstance(status, int) or not isinstance(kind, str) or not (code is None or isinstance(code, str)):
            return  # computed status or code: the HTTP exceptions, added from their table
        raised = next((found for c in reversed(self._classes) if c and (found := _exception(self.module, c))), None)
        self.found.append((status, kind, code, raised or f"`{self.module}`"))


def _exception(module: str, name: str) -> str | None:
    """`Name`: its docstring's first line, for an exception class visible in the frontend module `module`."""
    dotted = "dgate." + module.removesuffix(".py").replace("/", ".")
    found = getattr(importlib.import_module(dotted), name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        return None
    doc = (found.__doc__ or "").strip().splitlines()
    return f"`{name}`" + (f": {doc[0].rstrip('.')}" if doc and found.__doc__ != Exception.__doc__ else "")


def _frontend_dir() -> Path:
    spec = importlib.util.find_spec("dgate.frontend")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def error_rows() -> list[_ErrorRow]:
    from starlette.exceptions import HTTPException

    from dgate.frontend import errors

    root = _frontend_dir()
    rows: dict[tuple[int, str, str | None], _ErrorRow] = {}
    for path in sorted(root.rglob("*.py")):
        calls = _ErrorCalls(f"{root.name}/{path.relative_to(root).as_posix()}")
        calls.visit(ast.parse(path.read_text(), str(path)))
        for status, kind, code, where in calls.found:
            rows.setdefault((status, kind, code), _ErrorRow(status, kind, code)).causes.add(where)
    for status in getattr(errors, "_HTTP_CODES", {}):
        error = errors.from_exception(HTTPException(status))
        key = (error.status, error.type, error.code)
        rows.setdefault(key, _ErrorRow(*key)).causes.add(f"Starlette's `HTTPException({status})`")
    return sorted(rows.values(), key=lambda r: (r.status, r.code or ""))


def errors_table() -> str:
    lines = ["| HTTP | `type` | `code` | raised by |", "|---|---|---|---|"]
    for row in error_rows():
        code = f"`{row.code}`" if row.code else "—"
        lines.append(f"| {row.status} | `{row.type}` | {code} | {', '.join(sorted(row.causes))} |")
    return "\n".join(lines)


TABLES = {"settings": settings_table, "errors": errors_table}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def read_block(text: str, name: str) -> str | None:
    match = _block(name).search(text)
    return None if match is None else match.group(2).rstrip("\n")


def render(text: str) -> str:
    """`text` with every generated block replaced by what the code says now."""
    for name, table in TABLES.items():
        match = _block(name).search(text)
        if match is None:
            raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block")
        text = text[:match.start(2)] + table() + "\n" + text[match.end(2):]
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dgate.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="README", help="replace the generated blocks in this file")
    args = parser.parse_args(argv)
    if args.write is not None:
        args.write.write_text(render(args.write.read_text()))
        return
    for name, table in TABLES.items():
        print(f"<!-- {name}:begin -->\n{table()}\n<!-- {name}:end -->\n")


if __name__ == "__main__":
    main()
