"""Test support shared by the test suite and the benchmarks: an OpenAI-compatible HTTP mock and
helpers that lay out small workflows, isolated instances and store snapshots. Nothing in the
product imports it."""
