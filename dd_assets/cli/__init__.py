"""The `dd-assets` command line (console script `dd-assets = dd_assets.cli:main`)."""

from dd_assets.cli.main import main

__all__ = ["main"]
