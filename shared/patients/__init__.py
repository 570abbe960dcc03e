"""Patients in: Halaxy delivery intake, FHIR Patient mapping, sync, links and reconcile."""
