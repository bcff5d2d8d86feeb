"""Alembic migrations of the store (a package so that setuptools ships it)."""
