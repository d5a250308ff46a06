"""Preview: the first n rows of a stage, in memory, with no Dagster and no writes to the store."""

from __future__ import annotations

import asyncio

from dd_assets.config import WorkflowConfig
from dd_assets.engine import GenerationError, RowGroupResult, agenerate_rows, compile_stage


def preview_stage(workflow: WorkflowConfig, stage: str, n: int = 10) -> RowGroupResult:
    cs = compile_stage(workflow, stage)
    if workflow.upstream_of(cs.stage) is not None or cs.stage.seed is not None:
        raise GenerationError(
            f"preview of seeded stage {stage!r} is not supported yet; preview its upstream stage"
        )
    n = max(1, min(n, cs.stage.num_records))
    if not cs.needs_cells:
        return asyncio.run(agenerate_rows(cs, 0, n))

    from resources.llm.cells import LLMCellRunner

    async def with_llm() -> RowGroupResult:
        # No request cache: a preview leaves nothing on disk.
        async with LLMCellRunner(workflow, stage, cache_path=None) as runner:
            return await agenerate_rows(cs, 0, n, cells=runner)

    return asyncio.run(with_llm())
