"""FHIR R4 for the EMR: ImagingStudy, Patient, Endpoint, DiagnosticReport, Observation."""
