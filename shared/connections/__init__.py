"""Clinic connections: the model, its sealed store, onboarding and secret rotation."""
