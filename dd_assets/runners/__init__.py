"""Runners: plan a workflow and run, finalize, check, show and export its stages against the
store and the LLM client. Everything a command does that needs no Dagster lives here."""
