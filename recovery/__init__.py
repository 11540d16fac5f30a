"""recovery: roll a SQLite application database back to its previous release without
losing what users did after the deploy.

The public, scriptable API lives in :mod:`recovery.commands` (old name: :mod:`recovery.api`);
the CLI (:mod:`recovery.cli`) is a thin layer over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from recovery.errors import ExitCode, RecoveryError

__all__ = ["__version__", "ExitCode", "RecoveryError"]
