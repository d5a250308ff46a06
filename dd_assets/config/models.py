"""LLM model configs: any OpenAI-compatible endpoint. Keys are read from the environment variable
named here at call time, so the config (and anything derived from it) never holds a secret."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # ASCII only: str.isalnum() accepts any script


class InferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)


class ModelConfig(BaseModel):
    # hide_input_in_errors: a pydantic error must not print a pasted key or credentialed URL.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    base_url: str
    model: str
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key"
    )
    inference: InferenceParams = InferenceParams()
    max_parallel_requests: int = Field(default=4, ge=1, le=4096)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=50)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        # Checked first, and never echoed: the message must not print the credentials. A bare
        # `https://TOKEN@host` carries the secret as the user name: rejected too.
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "base_url must not carry credentials or a query string; put the key in the"
                " environment variable named by api_key_env"
            )
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {v!r} must be an http(s) URL such as https://host/v1")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            # Not echoed: a value that is not a variable name may well be the key itself.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits and"
                " underscores, e.g. NVIDIA_API_KEY), never the key itself"
            )
        return v

    def identity(self) -> dict[str, object]:
        """What decides generated content: endpoint (host and path only), model, sampling."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return {
            "base_url": urlunsplit((parts.scheme, host, parts.path, "", "")),
            "model": self.model,
            "inference": self.inference.model_dump(mode="json"),
        }
