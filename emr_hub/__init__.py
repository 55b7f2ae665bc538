"""emr_hub: a FHIR R4 interchange hub for a network of Vietnamese hospitals."""

__version__ = "0.1.0"
