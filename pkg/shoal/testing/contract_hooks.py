"""schemathesis hooks for the contract run (tests/test_contract.py): the positive- and
negative-data checks with an allow-list.

Loaded through SCHEMATHESIS_HOOKS=shoal.testing.contract_hooks by
`shoal.testing.fuzz.run_schemathesis(allow=...)`, which also excludes the built-in
`positive_data_acceptance` and `negative_data_rejection` so these run in their place (with
`--checks all` they are selected like any other check). The allow-list comes in
SHOAL_CONTRACT_ALLOW as JSON: a list of {"method", "path", "status", "detail"} where path and
detail are regular expressions searched in the operation's path template and the response
body. Only answers the spec itself rules out belong there (tests/test_contract.py says why for
each one); everything else a schema-valid request gets must not be a 400.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis
from schemathesis.specs.openapi import checks as builtin

ALLOW: list[dict[str, Any]] = json.loads(os.environ.get("SHOAL_CONTRACT_ALLOW") or "[]")


def allowed(case: Any, response: Any) -> bool:
    """Whether an answer matches an allow-list entry (method, path template, status, body)."""
    text = response.text if isinstance(getattr(response, "text", None), str) else ""
    for entry in ALLOW:
        if entry.get("method", case.method).upper() != case.method.upper():
            continue
        if not re.search(entry.get("path", ""), case.operation.path):
            continue
        if entry.get("status") not in (None, response.status_code):
            continue
        if re.search(entry.get("detail", ""), text):
            return True
    return False


@schemathesis.check
def positive_data_accepted_unless_allowed(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except for allow-listed answers."""
    try:
        return builtin.positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if allowed(case, response):
            return None
        raise


@schemathesis.check
def negative_data_rejected_unless_allowed(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, except for allow-listed answers."""
    try:
        return builtin.negative_data_rejection(ctx, response, case)
    except AssertionError:
        if allowed(case, response):
            return None
        raise
