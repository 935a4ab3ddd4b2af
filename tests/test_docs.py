"""The README's generated tables match the code (regenerate with `python -m dgate.docs --write README.md`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dgate import docs
from dgate.frontend.settings import FrontendSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(docs.TABLES))
def test_readme_block_is_generated(name: str) -> None:
    block = docs.read_block(README, name)
    assert block is not None, f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block"
    assert block == docs.TABLES[name](), (
        f"README.md's {name} table differs from the code: run `python -m dgate.docs --write README.md`"
    )


def test_render_changes_nothing_in_the_readme() -> None:
    assert docs.render(README) == README


def test_settings_table_names_every_variable() -> None:
    table = docs.settings_table()
    for name in FrontendSettings.model_fields:
        assert f"| `DGATE_{name.upper()}` |" in table


def test_errors_table_has_every_code_in_the_frontend_source() -> None:
    """An independent read of the source: every `code="..."` literal is a row of the table."""
    source = "\n".join(path.read_text() for path in (ROOT / "frontend").rglob("*.py"))
    codes = set(re.findall(r'\bcode="([a-z_]+)"', source))
    assert {"invalid_value", "model_not_found", "service_unavailable", "engine_error"} <= codes
    table = docs.errors_table()
    for code in codes:
        assert f"| `{code}` |" in table, code


def test_a_missing_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    field = FrontendSettings.model_fields["host"]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match="host"):
        docs.settings_table()
