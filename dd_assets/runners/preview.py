"""Preview: the first n rows of a stage, in memory, with no Dagster and no writes to the store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dd_assets.config import FileSeed
from dd_assets.config.limits import MAX_BUFFER_SIZE
from dd_assets.errors import GenerationError
from dd_assets.runners.plan import StagePlan

if TYPE_CHECKING:
    from dd_assets.engine import RowGroupResult


def preview_rows(plan: StagePlan, n: int) -> int:
    """How many rows a preview of `n` generates (the title says it before they are), or why
    the stage cannot be previewed. Loads nothing heavy: `dd-assets preview` prints its title
    before the engine (numpy, pyarrow, Faker) is imported (tests/cli/test_cli_imports.py)."""
    if plan.upstreams:
        names = " and ".join(repr(up.name) for up in plan.upstreams)
        raise GenerationError(
            f"stage {plan.name!r} is seeded from stage{'s' if len(plan.upstreams) > 1 else ''}"
            f" {names}, whose rows exist only once materialized; preview {names}, or materialize"
            f" and look at {plan.name!r} with `dd-assets export`"
        )
    # At most a row group's worth (MAX_BUFFER_SIZE): a preview holds its rows in memory.
    return max(1, min(n, plan.compiled.stage.num_records, MAX_BUFFER_SIZE))


def preview_stage(plan: StagePlan, n: int = 10) -> RowGroupResult:
    from dd_assets.engine import RowGroupUnfinished, agenerate_rows
    from dd_assets.runners.seeds import file_seed

    cs = plan.compiled
    seed_spec = cs.stage.seed
    n = preview_rows(plan, n)
    seed = None
    if isinstance(seed_spec, FileSeed):
        seed = file_seed(plan, lambda _: (0, n))(0).table
    if not cs.needs_cells:
        return asyncio.run(agenerate_rows(cs, 0, n, seed=seed))

    # Only now: a stage without LLM columns answers without loading the HTTP client.
    from dd_assets.llm.cells import LLMCellRunner
    from dd_assets.runners.images import image_loader
    from dd_assets.runners.materialize import Unfinished, UnfinishedCellsError

    async def with_llm() -> RowGroupResult:
        # No request cache: a preview leaves nothing on disk.
        async with LLMCellRunner(
            plan.workflow, plan.name, cache_path=None, load_image=image_loader(None, plan)
        ) as runner:
            try:
                return await agenerate_rows(cs, 0, n, seed=seed, cells=runner)
            except RowGroupUnfinished as exc:
                raise UnfinishedCellsError(
                    Unfinished(cells={plan.name: {0: exc.cells}}, last_error=exc.reason),
                    f"{exc.cells} LLM cell(s) of the preview got no answer: transient faults"
                    f" outlasted the retries (last error: {exc.reason}); try again once the"
                    " endpoint recovers",
                ) from None

    return asyncio.run(with_llm())
