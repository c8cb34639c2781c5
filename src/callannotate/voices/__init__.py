"""Enrolled voiceprints: the store, enrollment, identification, REST routes and CLI."""
