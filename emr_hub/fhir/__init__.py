"""The FHIR R4 core: validation, the versioned store, bundles and the REST adapter."""
