"""Commands registered on the main `cyclerd` app (filled in by issue 5/6 work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
