"""dd-assets: synthetic-data workflows (sampler, expression and LLM columns) as a resumable
Dagster asset graph. Layers, lowest first: config -> engine -> store, llm -> runners -> dagster
-> cli (docs/architecture.md)."""
