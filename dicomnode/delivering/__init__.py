"""Delivering results: sending result objects to the configured destinations."""
