"""Radiologists' verdicts as data: users, verdicts, their SR, local validation, shadow models."""
