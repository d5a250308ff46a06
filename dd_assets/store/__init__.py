"""The store: row groups as parquet files under `<root>/<workflow>/<stage>/<fp12>/`, written
atomically, with the filesystem as the truth for progress. No Dagster here."""
