"""Validation of every write: R4 structure through the fhir.resources R4B models, then the
hub's own rules (id and reference syntax, no nulls or empty values, Vietnamese identifiers).

What the R4B models do not catch, and so this hub does not yet either (see docs/validation.md):
string values such as ``"yes"`` are coerced where a boolean is expected, and codes with a
required binding (``Patient.gender``) are not checked against their value set. R4-only
resource types that R4B removed (``MedicinalProduct`` ...) are refused as unknown.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from emr_hub.errors import FhirError, Issue
from emr_hub.fhir.identifiers import identifier_problem
from emr_hub.fhir.strict import strict_issues
from emr_hub.fhir.unstorable import may_hold_nul, nul_path

# R4 ids, but not "." or "..", which are path segments to every URL library (a link to
# Patient/.. is a link to the FHIR base)
ID_PATTERN = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9\-.]{1,64}")
LOCAL_REFERENCE = re.compile(
    r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
ABSOLUTE_URL = re.compile(r"[a-z][a-z0-9+.\-]*:", re.IGNORECASE)


# The R4 resource types that the R4B models also define: R4B dropped a few R4-only types
# (docs/validation.md) and added some of its own, which are not R4 and so are refused.
_R4_TYPES_IN_R4B = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
]


@cache
def model_class(resource_type: str) -> type[Any] | None:
    """The R4B model for a resource type, or None when it is not a FHIR resource type."""
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Resource) else None


# Named, not probed: importing all 128 models builds their pydantic schemas, about 3 s of CPU
# that every process (each CLI command, each worker) would pay at start. A model is imported
# when a resource of its type is first validated; tests/fhir/test_validation.py checks that
# each type named here has one.
R4_RESOURCE_TYPES = frozenset(_R4_TYPES_IN_R4B)


def is_resource_type(name: str) -> bool:
    """An R4 resource type this hub can validate (abstract and R4B-only types are not)."""
    return name in R4_RESOURCE_TYPES


def check_id(value: str, expression: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise FhirError(
            400,
            [
                Issue(
                    "value",
                    f"Invalid id {value!r}: 1 to 64 letters, digits, '-' or '.' "
                    "(and not '.' or '..' alone)",
                    (expression,),
                )
            ],
        )


def validate_resource(
    data: Any, *, expected_type: str | None = None, where: str = ""
) -> dict[str, Any]:
    """Refuse ``data`` unless it is a valid R4 resource that obeys the hub's rules.

    ``where`` is the FHIRPath of the resource inside its request (``Bundle.entry[2].resource``);
    every issue's ``expression`` starts with it. Returns ``data`` itself, unchanged.
    """
    root = where or (data.get("resourceType") if isinstance(data, dict) else None) or "Resource"
    if not isinstance(data, dict):
        raise FhirError(
            400, [Issue("structure", "Expected a JSON object holding a FHIR resource", (root,))]
        )
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str) or not is_resource_type(resource_type):
        raise FhirError(
            400,
            [
                Issue(
                    "structure",
                    f"Unknown or missing resourceType {resource_type!r}",
                    (f"{root}.resourceType" if where else "resourceType",),
                )
            ],
        )
    if expected_type and resource_type != expected_type:
        raise FhirError(
            400,
            [
                Issue(
                    "invalid",
                    f"resourceType {resource_type!r} does not match the URL's type "
                    f"{expected_type!r}",
                    (f"{root}.resourceType" if where else "resourceType",),
                )
            ],
        )
    root = where or resource_type
    if may_hold_nul(data):
        found = nul_path(data, root)
        if found:
            message = "The text holds a NUL character (U+0000), which cannot be stored"
            raise FhirError(400, [Issue("invalid", message, (found,))])
    checker = _RuleChecker(root, data)
    checker.check(data)
    structural = [issue for issue in checker.issues if issue.code != "business-rule"]
    if not structural:
        structural = strict_issues(data, root) or _model_issues(resource_type, data, root)
    issues = structural or checker.issues
    if issues:
        status = 400 if structural else 422
        raise FhirError(status, issues)
    return data


def _model_issues(resource_type: str, data: dict[str, Any], root: str) -> list[Issue]:
    cls = model_class(resource_type)
    assert cls is not None
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        return [_issue_from_pydantic(error, root) for error in exc.errors()[:20]]
    except (KeyError, TypeError, ValueError) as exc:  # fhir_core raises bare errors on odd input
        return [Issue("structure", f"Invalid resource structure: {exc!r}", (root,))]
    return []


def _issue_from_pydantic(error: Any, root: str) -> Issue:
    path = format_path(
        root, tuple("resourceType" if p == "resource_type" else p for p in error["loc"])
    )
    kind = error["type"]
    if kind == "extra_forbidden":
        name = error["loc"][-1]
        return Issue("structure", f"Unknown element {name!r}", (path,))
    if kind in {"missing", "model_field_validation.missing"}:
        return Issue("required", f"Missing required element: {error['msg']}", (path,))
    return Issue("value", f"Invalid value {_short(error.get('input'))}: {error['msg']}", (path,))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_path(root: str, parts: tuple[Any, ...]) -> str:
    out = [root]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}")
    return "".join(out)


class _RuleChecker:
    """One walk over the JSON: nulls and empties, reference syntax, identifier shapes."""

    def __init__(self, root: str, resource: dict[str, Any]) -> None:
        self.root = root
        self.path: list[Any] = []
        self.issues: list[Issue] = []
        self.birth_date = (
            resource.get("birthDate") if resource.get("resourceType") == "Patient" else None
        )

    def here(self) -> str:
        return format_path(self.root, tuple(self.path))

    def check(self, value: Any) -> None:
        if isinstance(value, dict):
            if not value:
                self.issues.append(
                    Issue("structure", "Empty objects are not allowed in FHIR JSON", (self.here(),))
                )
                return
            self._check_object(value)
            for key, item in value.items():
                self.path.append(key)
                self.check(item)
                self.path.pop()
        elif isinstance(value, list):
            if not value:
                self.issues.append(
                    Issue("structure", "Empty arrays are not allowed in FHIR JSON", (self.here(),))
                )
            for index, item in enumerate(value):
                self.path.append(index)
                self.check(item)
                self.path.pop()
        elif value is None:
            self.issues.append(
                Issue("structure", "null is not allowed in FHIR JSON", (self.here(),))
            )
        elif isinstance(value, str) and not value.strip() and self.path and self.path[-1] != "div":
            self.issues.append(
                Issue("value", "Empty or blank strings are not allowed", (self.here(),))
            )

    def _check_object(self, obj: dict[str, Any]) -> None:
        reference = obj.get("reference")
        if isinstance(reference, str):
            problem = reference_problem(reference)
            if problem:
                self.issues.append(Issue("invalid", problem, (self.here() + ".reference",)))
        system, value = obj.get("system"), obj.get("value")
        if isinstance(system, str) and isinstance(value, str):
            birth_date = self.birth_date if self.path[:1] == ["identifier"] else None
            problem = identifier_problem(system, value, birth_date)
            if problem:
                self.issues.append(
                    Issue(
                        "business-rule",
                        f"Invalid identifier under {system}: {problem}",
                        (self.here() + ".value",),
                    )
                )
        if len(self.path) == 2 and self.path[0] == "contained":
            contained_type = obj.get("resourceType")
            if not isinstance(contained_type, str) or not is_resource_type(contained_type):
                self.issues.append(
                    Issue(
                        "structure",
                        f"Unknown contained resourceType {contained_type!r}",
                        (self.here(),),
                    )
                )


def reference_problem(reference: str) -> str | None:
    """Why a stored reference is not acceptable, or None.

    Accepted: ``#local``, ``Type/id[/_history/v]`` with a known type, absolute URLs and
    ``urn:oid:``. ``urn:uuid:`` and conditional ``Type?query`` references only make sense
    inside a transaction, which resolves them before validation; any left are unresolvable.
    """
    if reference.startswith("#"):
        return None
    if reference.startswith("urn:uuid:"):
        return f"Unresolvable reference {reference!r}: no entry in this request has that fullUrl"
    if "?" in reference and ABSOLUTE_URL.match(reference) is None:
        return f"Conditional reference {reference!r} is only resolved inside a transaction Bundle"
    match = LOCAL_REFERENCE.fullmatch(reference)
    if match:
        if not is_resource_type(match["type"]):
            return f"Reference {reference!r} names an unknown resource type"
        return None
    if ABSOLUTE_URL.match(reference):
        return None
    return f"Malformed reference {reference!r}: expected Type/id, an absolute URL or #contained"
