"""The Dagster layer: assets, asset checks, the IO manager and resources, and the in-process runs
the CLI launches. The code location itself is `dd_assets.dagster.definitions`, which nothing
imports."""
