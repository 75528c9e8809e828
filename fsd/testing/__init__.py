"""Helpers for testing fsd with real clients: a guest VM harness and, later, a scripted frontend."""
