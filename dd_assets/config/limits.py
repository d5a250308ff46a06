"""Every bound on what a workflow config may ask for, in one place (docs/config.md#limits).

Each exists so that bad or hostile input fails at once with a clear error instead of running
out of time or memory later: a config is small text, so anything bigger is a mistake or an
attack, and a dataset is cut into at most as many row groups as partition keys have digits for."""

from __future__ import annotations

# The config file: read whole, parsed in Python, validated model by model.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB; large data belongs in a seed file
MAX_YAML_DEPTH = 64  # nested mappings/lists; a JSON schema in output_format needs ~20
MAX_YAML_NODES = 250_000  # values after alias expansion (an alias counts each time it is used)

# A stage. Row groups are partitions keyed 00000-99999.
MAX_NUM_RECORDS = 1_000_000_000
MAX_BUFFER_SIZE = 1_000_000  # rows of one row group, held in memory while it is generated
MAX_ROW_GROUPS = 100_000  # ceil(num_records / buffer_size)

# Sampler params: round() beyond float64's ~17 significant digits changes nothing.
MAX_DECIMAL_PLACES = 15

# One rendered template (an expression cell, a prompt, a filter or schema_transform value).
MAX_TEMPLATE_OUTPUT = 1 << 20  # characters; beyond any model's context window
