"""Tool calls of LLM columns (DataDesigner's `tool_configs` and a column's `tool_alias`): the MCP
servers that offer the tools (`mcp_providers:`, DataDesigner's MCPProvider /
LocalStdioMCPProvider, which it takes beside the config, never inside it) and which of their
tools a column may call (`tools:`, DataDesigner's ToolConfig keyed by its tool_alias).

Secrets: an HTTP provider's key is the NAME of an environment variable (`api_key`, as for model
providers); a stdio server gets DataDesigner's minimal environment plus `env` (literal values,
for settings) and `pass_env` (names of variables copied from ours: the way to hand it a key).
None of them is part of a fingerprint, and nothing here is ever printed."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from dd_assets.config.base import Float, Int, identity_url, is_identifier, model_settings


class HttpMcpProvider(BaseModel):
    """A running MCP server reached over HTTP (DataDesigner's MCPProvider)."""

    model_config = model_settings(extra="forbid", frozen=True, hide_input_in_errors=True)

    provider_type: Literal["streamable_http", "sse"]
    endpoint: str
    api_key: str | None = Field(default=None, description="environment variable holding the key")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "endpoint must not carry credentials or a query string; name the environment"
                " variable holding the key in api_key"
            )
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"endpoint {v!r} must be an http(s) URL")
        return v

    @field_validator("api_key")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not is_identifier(v):
            raise ValueError(
                "api_key must be the NAME of an environment variable holding the key; a literal"
                " key does not belong in a config file (value not shown)"
            )
        return v

    def identity(self) -> dict[str, object]:
        return {"provider_type": self.provider_type, "endpoint": identity_url(self.endpoint)}


class StdioMcpProvider(BaseModel):
    """An MCP server started as a child process, spoken to over stdin/stdout (DataDesigner's
    LocalStdioMCPProvider)."""

    model_config = model_settings(extra="forbid", frozen=True, hide_input_in_errors=True)

    provider_type: Literal["stdio"] = "stdio"
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[str] = Field(default_factory=list)

    @field_validator("pass_env")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not is_identifier(name):
                raise ValueError(f"pass_env holds environment variable names; {name!r} is not one")
        return v

    def identity(self) -> dict[str, object]:
        return {"provider_type": "stdio", "command": self.command, "args": list(self.args)}


McpProvider = Annotated[HttpMcpProvider | StdioMcpProvider, Field(discriminator="provider_type")]


class ToolsConfig(BaseModel):
    """Which MCP tools a column with this `tool_alias` is offered, and how long it may go on
    calling them (DataDesigner's ToolConfig)."""

    model_config = model_settings(extra="forbid", frozen=True)

    providers: list[str] = Field(min_length=1)
    allow_tools: list[str] | None = None
    max_tool_call_turns: Int = Field(default=5, ge=1, le=1000)
    timeout_s: Float | None = Field(
        default=None, gt=0, le=86_400, description="deadline of one tool call (and of listing)"
    )

    def identity(
        self, providers: dict[str, HttpMcpProvider | StdioMcpProvider]
    ) -> dict[str, object]:
        """What decides the answers: the servers, the tools offered, the turn budget (not the
        timeout, as in DataDesigner's fingerprint)."""
        return {
            "providers": {p: providers[p].identity() for p in self.providers if p in providers},
            "allow_tools": sorted(self.allow_tools or []),
            "max_tool_call_turns": self.max_tool_call_turns,
        }
