"""Relinking uploaded files in a PostgreSQL database (same contract as :mod:`recovery.files.relink`)."""

from __future__ import annotations
