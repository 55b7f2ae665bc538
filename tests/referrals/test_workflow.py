"""The referral Task state machine: every allowed and forbidden transition, roles, content."""

from __future__ import annotations

import copy
from itertools import product
from typing import Any

import pytest

from emr_hub.errors import FhirError
from emr_hub.referrals import workflow
from emr_hub.referrals.workflow import (
    FINAL,
    IMMUTABLE,
    TRANSITIONS,
    check_creation,
    check_transition,
)

OWNER = "Organization/bach-mai"
REQUESTER = "Organization/bac-ninh-general"
STRANGER = "Organization/cho-ray"

ALL_STATUSES = [
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
]
MANAGED = ["requested", "accepted", "rejected", "cancelled", "in-progress", "completed", "failed"]

ALLOWED = {
    ("requested", "accepted"): OWNER,
    ("requested", "rejected"): OWNER,
    ("requested", "cancelled"): REQUESTER,
    ("accepted", "in-progress"): OWNER,
    ("accepted", "cancelled"): REQUESTER,
    ("in-progress", "completed"): OWNER,
    ("in-progress", "failed"): OWNER,
}
"""The issue's table, written out independently of workflow.TRANSITIONS: (from, to) → who."""

FORBIDDEN = [
    (old, new)
    for old, new in product(MANAGED, ALL_STATUSES)
    if old != new and (old, new) not in ALLOWED
]

SUMMARY = {
    "type": {"text": "Discharge summary"},
    "valueReference": {"reference": "DocumentReference/tom-tat-ra-vien"},
}


def task(status: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": "referral-1",
        "meta": {"versionId": "1"},
        "status": status,
        "intent": "order",
        "focus": {"reference": "ServiceRequest/giay-chuyen-tuyen-1"},
        "for": {"reference": "Patient/demo-nguyen-thi-lan"},
        "requester": {"reference": REQUESTER},
        "owner": {"reference": OWNER},
    }
    resource.update(extra)
    return resource


def completing(new: str) -> dict[str, Any]:
    """What a Task moving to ``new`` must carry."""
    if new == "rejected":
        return {"statusReason": {"text": "Hết giường hồi sức"}}
    if new == "completed":
        return {"output": [SUMMARY]}
    return {}


def refusal(old: dict[str, Any], new: dict[str, Any], caller: str, **kwargs: Any) -> FhirError:
    before = copy.deepcopy(old)
    with pytest.raises(FhirError) as caught:
        check_transition(old, new, caller, **kwargs)
    assert old == before  # the stored Task is untouched
    return caught.value


# ------------------------------------------------------------------------------ the table


def test_the_table_is_the_issue_s() -> None:
    written = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert written == set(ALLOWED)
    assert {new: workflow.ACTOR[new].value for _, new in ALLOWED} == {
        new: "owner" if who == OWNER else "requester" for (_, new), who in ALLOWED.items()
    }
    assert set(FINAL) == {"rejected", "cancelled", "completed", "failed"}
    assert set(IMMUTABLE) == {"focus", "for", "requester", "owner", "intent"}


@pytest.mark.parametrize(("old", "new"), list(ALLOWED))
def test_allowed_transition_by_the_right_hospital(old: str, new: str) -> None:
    check_transition(task(old), task(new, **completing(new)), ALLOWED[(old, new)])


@pytest.mark.parametrize(("old", "new"), list(ALLOWED))
def test_allowed_transition_with_business_status_and_notes(old: str, new: str) -> None:
    stored = task(old, businessStatus={"text": "Chờ xếp lịch"})
    changed = task(
        new,
        businessStatus={"coding": [{"system": "http://example.org/bs", "code": "anything"}]},
        note=[{"text": "Đã liên hệ khoa"}],
        **completing(new),
    )
    check_transition(stored, changed, ALLOWED[(old, new)])


@pytest.mark.parametrize(
    ("old", "new", "caller"),
    [
        (old, new, caller)
        for (old, new), right in ALLOWED.items()
        for caller in (OWNER, REQUESTER, STRANGER)
        if caller != right
    ],
)
def test_allowed_transition_by_the_wrong_hospital_is_403(old: str, new: str, caller: str) -> None:
    error = refusal(task(old), task(new, **completing(new)), caller)
    assert error.status == 403
    (issue,) = error.issues
    assert issue.code == "forbidden"
    role = "owner" if ALLOWED[(old, new)] == OWNER else "requester"
    assert issue.expression == (f"Task.{role}",)
    assert caller in issue.diagnostics and ALLOWED[(old, new)] in issue.diagnostics


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
@pytest.mark.parametrize("caller", [OWNER, REQUESTER])
def test_forbidden_transition_is_409(old: str, new: str, caller: str) -> None:
    error = refusal(task(old), task(new, **completing(new)), caller)
    assert error.status == 409
    (issue,) = error.issues
    assert issue.code == "business-rule" and issue.expression == ("Task.status",)
    assert old in issue.diagnostics


@pytest.mark.parametrize(
    ("old", "new"),
    [("requested", "completed"), ("completed", "in-progress"), ("rejected", "accepted")],
)
def test_named_forbidden_transitions(old: str, new: str) -> None:
    assert refusal(task(old), task(new, **completing(new)), OWNER).status == 409


@pytest.mark.parametrize("old", ["draft", "on-hold", "received", "entered-in-error", None])
def test_a_stored_status_outside_the_workflow_is_409(old: str | None) -> None:
    stored = task("requested")
    stored["status"] = old
    assert refusal(stored, task("accepted"), OWNER).status == 409


def test_missing_new_status_is_422() -> None:
    new = task("accepted")
    del new["status"]
    error = refusal(task("requested"), new, OWNER)
    assert error.status == 422 and error.issues[0].expression == ("Task.status",)


def test_roles_are_read_from_the_stored_task() -> None:
    hijack = task("accepted", owner={"reference": STRANGER})
    error = refusal(task("requested"), hijack, STRANGER)
    assert error.status == 403


# ------------------------------------------------------------------------------ content


@pytest.mark.parametrize(
    "reason",
    [None, {}, {"text": "  "}, {"coding": []}, {"coding": [{"system": "http://x"}]}],
)
def test_rejected_needs_a_status_reason(reason: dict[str, Any] | None) -> None:
    new = task("rejected") if reason is None else task("rejected", statusReason=reason)
    error = refusal(task("requested"), new, OWNER)
    assert error.status == 422
    (issue,) = error.issues
    assert issue.expression == ("Task.statusReason",)


@pytest.mark.parametrize(
    "reason",
    [{"text": "Không đủ chuyên khoa"}, {"coding": [{"system": "http://x", "code": "no-bed"}]}],
)
def test_rejected_with_a_status_reason(reason: dict[str, Any]) -> None:
    check_transition(task("requested"), task("rejected", statusReason=reason), OWNER)


def output(reference: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": {"text": "Summary"}, "valueReference": reference}]


@pytest.mark.parametrize(
    "outputs",
    [
        None,
        [],
        output({"reference": "Encounter/dot-dieu-tri"}),  # where care happened, not a summary
        output({"reference": "Observation/1"}),
        output({"reference": "#contained-summary", "type": "DocumentReference"}),
        output({"identifier": {"value": "x"}, "type": "DocumentReference"}),
        output({"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}),
        [{"type": {"text": "Summary"}, "valueString": "Bệnh nhân ổn định"}],
    ],
)
def test_completed_needs_a_summary_output(outputs: list[dict[str, Any]] | None) -> None:
    new = task("completed") if outputs is None else task("completed", output=outputs)
    error = refusal(task("in-progress"), new, OWNER)
    assert error.status == 422
    (issue,) = error.issues
    assert issue.expression == ("Task.output",)
    assert "DocumentReference" in issue.diagnostics


@pytest.mark.parametrize(
    "outputs",
    [
        output({"reference": "DocumentReference/1"}),
        output({"reference": "Composition/discharge-1"}),
        output({"reference": "DiagnosticReport/ct-1"}),
        output({"reference": "https://hub.example/fhir/DocumentReference/1/_history/2"}),
        output(
            {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "type": "Composition"}
        ),
        [*output({"reference": "Encounter/e"}), *output({"reference": "Composition/c"})],
    ],
)
def test_completed_with_a_summary_output(outputs: list[dict[str, Any]]) -> None:
    check_transition(task("in-progress"), task("completed", output=outputs), OWNER)


CHANGES = {
    "focus": {"reference": "ServiceRequest/another-letter"},
    "for": {"reference": "Patient/someone-else"},
    "requester": {"reference": STRANGER},
    "owner": {"reference": STRANGER},
    "intent": "plan",
}


@pytest.mark.parametrize(("old", "new"), list(ALLOWED))
@pytest.mark.parametrize("element", IMMUTABLE)
def test_immutable_elements_cannot_change_in_a_transition(old: str, new: str, element: str) -> None:
    changed = task(new, **completing(new))
    changed[element] = CHANGES[element]
    error = refusal(task(old), changed, ALLOWED[(old, new)])
    assert error.status == 422
    (issue,) = error.issues
    assert issue.expression == (f"Task.{element}",)


@pytest.mark.parametrize("element", IMMUTABLE)
def test_immutable_elements_cannot_be_removed(element: str) -> None:
    changed = task("accepted")
    del changed[element]
    assert refusal(task("requested"), changed, OWNER).issues[0].expression == (f"Task.{element}",)


def test_every_problem_in_one_outcome() -> None:
    changed = task("rejected", intent="plan", focus={"reference": "ServiceRequest/x"})
    error = refusal(task("requested"), changed, OWNER)
    assert error.status == 422
    assert {issue.expression for issue in error.issues} == {
        ("Task.focus",),
        ("Task.intent",),
        ("Task.statusReason",),
    }


def test_references_compare_by_target() -> None:
    same = task(
        "accepted",
        owner={"reference": f"https://hub.example/fhir/{OWNER}", "display": "Bệnh viện Bạch Mai"},
        focus={"reference": "ServiceRequest/giay-chuyen-tuyen-1/_history/3"},
        requester={"reference": REQUESTER, "display": "BV Đa khoa tỉnh Bắc Ninh"},
    )
    check_transition(task("requested"), same, OWNER)


def test_caller_given_as_an_absolute_reference() -> None:
    check_transition(task("requested"), task("accepted"), f"https://hub.example/fhir/{OWNER}")


def test_owner_resolved_by_the_service_layer() -> None:
    stored = task("requested", owner={"reference": "PractitionerRole/bs-lan"})
    new = task("accepted", owner={"reference": "PractitionerRole/bs-lan"})
    with pytest.raises(FhirError) as caught:  # the default resolver knows only Organizations
        check_transition(stored, new, OWNER)
    assert caught.value.status == 403 and "none named" in str(caught.value)

    def hospital_of(reference: dict[str, Any]) -> str | None:
        return {"PractitionerRole/bs-lan": OWNER, REQUESTER: REQUESTER}.get(reference["reference"])

    check_transition(stored, new, OWNER, hospital_of=hospital_of)


# ------------------------------------------------------------------------------ same status


@pytest.mark.parametrize("status", ["requested", "accepted", "in-progress"])
@pytest.mark.parametrize("caller", [OWNER, REQUESTER])
def test_live_task_updates_without_a_transition(status: str, caller: str) -> None:
    check_transition(task(status), task(status), caller)  # an identical retry
    check_transition(
        task(status),
        task(status, businessStatus={"text": "Đang chờ kết quả"}, note=[{"text": "x"}]),
        caller,
    )


@pytest.mark.parametrize("status", ["requested", "accepted", "in-progress"])
def test_live_task_updates_by_a_stranger_are_403(status: str) -> None:
    error = refusal(task(status), task(status, businessStatus={"text": "x"}), STRANGER)
    assert error.status == 403
    assert error.issues[0].expression == ("Task.owner", "Task.requester")


@pytest.mark.parametrize(
    ("status", "element"), list(product(["requested", "in-progress"], IMMUTABLE))
)
def test_live_task_updates_keep_immutable_elements(status: str, element: str) -> None:
    changed = task(status)
    changed[element] = CHANGES[element]
    error = refusal(task(status), changed, OWNER)
    assert error.status == 422 and error.issues[0].expression == (f"Task.{element}",)


@pytest.mark.parametrize("status", sorted(FINAL))
@pytest.mark.parametrize("caller", [OWNER, REQUESTER, STRANGER])
def test_final_task_accepts_only_an_exact_repeat(status: str, caller: str) -> None:
    stored = task(status, **completing(status))
    repeat = copy.deepcopy(stored)
    repeat["meta"] = {"versionId": "2", "lastUpdated": "2025-02-01T10:00:00+07:00"}
    check_transition(stored, repeat, caller)
    changed = copy.deepcopy(stored)
    changed["businessStatus"] = {"text": "changed"}
    assert refusal(stored, changed, caller).status == 409


# ------------------------------------------------------------------------------ creation


def test_creation_by_the_requester() -> None:
    check_creation(task("requested"), REQUESTER)
    check_creation(task("requested"), f"https://hub.example/fhir/{REQUESTER}")


@pytest.mark.parametrize("caller", [OWNER, STRANGER])
def test_creation_by_another_hospital_is_403(caller: str) -> None:
    with pytest.raises(FhirError) as caught:
        check_creation(task("requested"), caller)
    assert caught.value.status == 403
    assert caught.value.issues[0].expression == ("Task.requester",)


@pytest.mark.parametrize("status", [s for s in ALL_STATUSES if s != "requested"])
def test_creation_starts_requested(status: str) -> None:
    with pytest.raises(FhirError) as caught:
        check_creation(task(status), REQUESTER)
    assert caught.value.status == 422
    assert caught.value.issues[0].expression == ("Task.status",)


def test_creation_needs_an_owner() -> None:
    new = task("requested")
    del new["owner"]
    with pytest.raises(FhirError) as caught:
        check_creation(new, REQUESTER)
    assert caught.value.status == 422
    assert caught.value.issues[0].expression == ("Task.owner",)


def test_outcome_renders() -> None:
    error = refusal(task("requested"), task("completed", output=[SUMMARY]), OWNER)
    outcome = error.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Task.status"]
