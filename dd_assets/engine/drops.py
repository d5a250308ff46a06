"""Why rows are dropped, and the drops table beside each row group: definitions shared by the
engine, which records drops, and the store, which writes and reads the table (without loading
the rest of the engine)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

MESSAGE_EXCERPT = 500

# Why a row was dropped: the same request would fail the same way again (docs/llm.md).
DROP_KINDS = (
    "rejected",  # the endpoint refused this request: HTTP 400, 413, 422
    "too_large",  # the response body was over max_response_bytes
    "unusable_answer",  # no usable value after max_parse_retries (schema, refusal, cut off)
    "expression",  # a Jinja expression or prompt template failed on this row
    "custom",  # a custom column's function raised or returned no usable value for this row
    "tool_call",  # the model's tool call was wrong (unknown tool, bad arguments) or refused
)

# One row per dropped row: where, which column, why (the drops table beside each row group).
DROPS_SCHEMA = pa.schema(
    [
        pa.field("row_group", pa.int64()),
        pa.field("row", pa.int64()),
        pa.field("column", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("status", pa.int32()),
        pa.field("message", pa.string()),
    ]
)


@dataclass(frozen=True)
class Drop:
    """One dropped row and why: the provenance a user needs to find and fix it."""

    row: int
    column: str
    kind: str
    message: str
    status: int | None = None

    @property
    def label(self) -> str:
        """The key this drop is counted under in a row group's `drop_reasons`: few distinct
        values (the message is in the drops table), prefixed by the column for the checks."""
        status = f" (HTTP {self.status})" if self.kind == "rejected" and self.status else ""
        return f"{self.column}: {self.kind}{status}"
