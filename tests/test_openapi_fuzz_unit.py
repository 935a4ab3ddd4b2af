"""schemathesis against the frontend's own OpenAPI document (issue 18, (b)), with API keys configured: a
bounded number of generated requests per operation, valid and invalid, on a fake engine. No answer may
be a 5xx, and every answer must be one the document lists, in the shape it gives."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from frontend_fixtures import fake_frontend
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from test_auth_unit import ADMIN_KEY, AuthEngine
from test_auth_unit import frontend_settings as frontend_settings  # noqa: F401 - the keyed settings

served, engine = fake_frontend(AuthEngine)[:2]

CHECKS: list[Callable[..., Any]] = [not_a_server_error, status_code_conformance, content_type_conformance,
                                    response_schema_conformance]
EXAMPLES_PER_OPERATION = 12


@pytest.fixture
def openapi_schema(served: tuple[str, AuthEngine]) -> Any:
    return schemathesis.openapi.from_url(f"{served[0]}/openapi.json")


def test_every_operation_answers_as_its_document_says(openapi_schema: Any, engine: AuthEngine) -> None:
    failures: dict[str, str] = {}
    calls: list[int] = []
    operations = 0
    for result, mode in itertools.product(openapi_schema.get_all_operations(), GenerationMode):
        operation = result.ok()
        operations += 1

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            # The admin key reaches every route (the LoRA ones too); quotas do not apply to it.
            response = case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, checks=CHECKS)
            calls.append(response.status_code)

        try:
            call()
        except Unsatisfiable:  # an operation without inputs to make invalid (GET /health): no negative case
            continue
        except Exception as exc:  # schemathesis' failure groups: keep each operation's, report them all
            failures[f"{operation.label} ({mode.value})"] = str(exc)[:2000]
    print(f"{operations} operations x modes, {len(calls)} calls, statuses {sorted(set(calls))}")
    assert operations >= 30 and 200 in calls and 400 in calls
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
