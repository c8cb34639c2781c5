"""Alembic migrations of the relational store (run through :mod:`callannotate.db.migrate`)."""
