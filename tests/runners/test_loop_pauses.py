"""What a wave does so its event loop is not stopped mid-run (runners/loop_pauses.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap


def test_a_wave_looks_for_pandas_in_a_thread_and_freezes_the_gc_only_while_waves_run() -> None:
    """In a fresh interpreter: pyarrow's look for pandas is done by the time a wave ends (so
    the first row group to become a table does not import pandas on the loop), and the objects
    alive at a wave's start stay out of the GC's walks, and young collections wait for
    WAVE_YOUNG_OBJECTS new objects, until the last running wave ends (cancelled or not)."""
    code = textwrap.dedent(
        """
        import asyncio, gc, sys
        from dd_assets.runners.loop_pauses import fewer_pauses

        async def main():
            gc.set_threshold(500, 9, 8)
            before = gc.get_freeze_count()
            async with fewer_pauses():
                async with fewer_pauses():
                    inside = gc.get_freeze_count(), gc.get_threshold()
                still = gc.get_freeze_count(), gc.get_threshold()
            try:
                async with fewer_pauses():
                    raise asyncio.CancelledError
            except asyncio.CancelledError:
                pass
            print(
                before,
                inside[0] > 0, inside[1] == (10_000, 9, 8),
                still[0] > 0, still[1] == (10_000, 9, 8),
                gc.get_freeze_count(), gc.get_threshold() == (500, 9, 8),
                "pandas" in sys.modules,
            )

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    has_pandas = importlib.util.find_spec("pandas") is not None
    assert out == ["0", "True", "True", "True", "True", "0", "True", str(has_pandas)]
