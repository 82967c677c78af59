"""Test doubles for Slack."""
