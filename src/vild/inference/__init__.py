"""Inference for users: scoring methods over a detector's regions."""
