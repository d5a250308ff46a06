"""Preview: the first n rows of a stage, in memory, with no Dagster and no writes to the store."""

from __future__ import annotations

import asyncio

from dd_assets.config import FileSeed, WorkflowConfig, seed_upstreams
from dd_assets.engine import GenerationError, RowGroupResult, agenerate_rows, compile_stage
from dd_assets.seed_sources import file_digest, file_source, sampled_rows, seed_key


def preview_stage(workflow: WorkflowConfig, stage: str, n: int = 10) -> RowGroupResult:
    cs = compile_stage(workflow, stage)
    seed_spec = cs.stage.seed
    ups = seed_upstreams(cs.stage)
    if ups:
        names = " and ".join(map(repr, ups))
        raise GenerationError(
            f"stage {stage!r} is seeded from stage{'s' if len(ups) > 1 else ''} {names}, whose"
            f" rows exist only once materialized; preview {names}, or materialize and look at"
            f" {stage!r} with `dd-assets export`"
        )
    n = max(1, min(n, cs.stage.num_records))
    seed = None
    if isinstance(seed_spec, FileSeed):
        source = file_source(seed_spec.path)
        key = seed_key(workflow.name, stage, seed_spec.strategy, file_digest(seed_spec.path))
        seed = sampled_rows(source, key, seed_spec.strategy, lambda _: (0, n))(0)
    if not cs.needs_cells:
        return asyncio.run(agenerate_rows(cs, 0, n, seed=seed))

    from resources.llm.cells import LLMCellRunner

    async def with_llm() -> RowGroupResult:
        # No request cache: a preview leaves nothing on disk.
        async with LLMCellRunner(workflow, stage, cache_path=None) as runner:
            return await agenerate_rows(cs, 0, n, seed=seed, cells=runner)

    return asyncio.run(with_llm())
