"""FHIR search: definitions registry, value extraction, index rows, query compilation."""
