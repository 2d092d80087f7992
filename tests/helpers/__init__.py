"""Helpers shared by the test files: composed configs, the command runners, Chromium, tiny reference models."""
