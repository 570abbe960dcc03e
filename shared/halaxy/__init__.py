"""Halaxy: its webhook notifications, its OAuth token and (later) its FHIR API."""
