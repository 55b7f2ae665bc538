"""One error type for the whole hub, rendered once as an OperationOutcome with its status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what went wrong (``diagnostics``) and where (``expression``)."""

    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: str = "error"

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


@dataclass
class FhirError(Exception):
    """An error a client can act on: ``status`` is the HTTP status, ``issues`` what and where."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(issue.diagnostics for issue in self.issues) or f"HTTP {self.status}"

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.as_fhir() for issue in issues]}


def fhir_error(status: int, code: str, message: str, expression: str | None = None) -> FhirError:
    return FhirError(status, [Issue(code, message, (expression,) if expression else ())])


def bad_request(message: str, expression: str | None = None, code: str = "invalid") -> FhirError:
    return fhir_error(400, code, message, expression)


def unprocessable(
    message: str, expression: str | None = None, code: str = "business-rule"
) -> FhirError:
    return fhir_error(422, code, message, expression)


def not_found(message: str) -> FhirError:
    return fhir_error(404, "not-found", message)


def gone(message: str) -> FhirError:
    return fhir_error(410, "deleted", message)


def conflict(message: str, code: str = "conflict") -> FhirError:
    return fhir_error(409, code, message)


def precondition_failed(message: str) -> FhirError:
    return fhir_error(412, "conflict", message)


def unauthorized(message: str) -> FhirError:
    error = fhir_error(401, "login", message)
    error.headers["WWW-Authenticate"] = 'Bearer realm="emr_hub"'
    return error


def forbidden(message: str) -> FhirError:
    return fhir_error(403, "forbidden", message)
