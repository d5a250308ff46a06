"""LLM model configs: any OpenAI-compatible endpoint. Keys are read from the environment variable
named here at call time, so the config (and anything derived from it) never holds a secret."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, JsonValue, field_validator, model_validator

from dd_assets.config.base import (
    Float,
    Int,
    added_field,
    fingerprint_dump,
    identity_url,
    is_identifier,
    model_settings,
)

# 2 MiB: far above any model's longest answer (128k output tokens are about 0.5 MB of text,
# under 1 MB even with JSON escaping), far below what would blow up a row group.
DEFAULT_MAX_RESPONSE_BYTES = 2 * 1024 * 1024
# What `dd-assets import` gives DataDesigner's image models: a 2048x2048 PNG is ~8 MB, ~11 MB
# in base64; several in one answer stay under this.
IMAGE_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

# DataDesigner 0.9.7's test for an image model served by /images/generations (its
# is_image_diffusion_model); any other image model is asked by chat completion.
DIFFUSION_MODEL_PATTERNS = (
    "dall-e-", "dalle", "stable-diffusion", "sd-", "sd_", "imagen", "gpt-image-",
)  # fmt: skip


class _UniformParams(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    low: Float
    high: Float

    @model_validator(mode="after")
    def _order(self) -> _UniformParams:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class _ManualParams(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    values: list[Float] = Field(min_length=1)
    weights: list[Float] | None = None

    @model_validator(mode="after")
    def _weights(self) -> _ManualParams:
        if self.weights is not None and (
            len(self.weights) != len(self.values)
            or any(w < 0 for w in self.weights)
            or sum(self.weights) <= 0
        ):
            raise ValueError("weights must be one non-negative weight per value, summing to > 0")
        return self


class UniformDistribution(BaseModel):
    """A sampling parameter drawn per LLM cell (DataDesigner's inference distributions)."""

    model_config = model_settings(extra="forbid", frozen=True)

    distribution_type: Literal["uniform"] = "uniform"
    params: _UniformParams


class ManualDistribution(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    distribution_type: Literal["manual"] = "manual"
    params: _ManualParams


Distribution = Annotated[
    UniformDistribution | ManualDistribution, Field(discriminator="distribution_type")
]


class InferenceParams(BaseModel):
    """Sampling parameters. temperature and top_p may be a distribution: each LLM cell then
    draws its own value, a function of (column, row) so a rerun asks exactly the same."""

    model_config = model_settings(extra="forbid", frozen=True)

    temperature: Annotated[Float, Field(ge=0, le=2)] | Distribution | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | Distribution | None = None
    max_tokens: Int | None = Field(default=None, ge=1, le=10_000_000)
    # Embedding models (DataDesigner's EmbeddingInferenceParams); sent to /embeddings only.
    encoding_format: Literal["float", "base64"] | None = added_field(None)
    dimensions: Int | None = added_field(None, ge=1, le=1_000_000)

    EMBEDDING_ONLY: ClassVar[tuple[str, ...]] = ("encoding_format", "dimensions")


class ModelConfig(BaseModel):
    # hide_input_in_errors: a pydantic error must not print a pasted key or credentialed URL.
    model_config = model_settings(extra="forbid", frozen=True, hide_input_in_errors=True)

    base_url: str
    model: str
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key"
    )
    inference: InferenceParams = InferenceParams()
    max_parallel_requests: Int = Field(default=4, ge=1, le=4096)
    timeout_s: Float = Field(
        default=60.0, gt=0, le=86_400, description="total deadline of one request, body included"
    )
    max_retries: Int = Field(
        default=5, ge=0, le=50, description="retries of transient faults other than 429"
    )
    max_response_bytes: Int = Field(
        default=DEFAULT_MAX_RESPONSE_BYTES,
        ge=1024,
        description="a longer response body is not read; its row is dropped as too_large",
    )
    extra_body: dict[str, JsonValue] | None = Field(
        default=None, description="merged into every request body (DataDesigner's extra_body)"
    )
    image_api: Literal["images", "chat"] | None = Field(
        default=None,
        description="how image columns ask this model: OpenAI's /images/generations, or a chat"
        " completion answering with images; unset: DataDesigner's rule (diffusion model names,"
        " e.g. dall-e-, gpt-image-, stable-diffusion, imagen: images; any other: chat)",
    )

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
        if v is not None and not is_identifier(v):
            # Not echoed: a value that is not a variable name may well be the key itself.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits and"
                " underscores, e.g. NVIDIA_API_KEY), never the key itself"
            )
        return v

    def identity(self) -> dict[str, object]:
        """What decides generated content: endpoint (host and path only), model, sampling."""
        out: dict[str, object] = {
            "base_url": identity_url(self.base_url),
            "model": self.model,
            # Embedding parameters only when set: other models keep their identity.
            "inference": fingerprint_dump(self.inference),
        }
        if self.extra_body is not None:  # only when set: models without it keep their identity
            out["extra_body"] = self.extra_body
        if self.image_api is not None:  # likewise
            out["image_api"] = self.image_api
        return out

    @property
    def images_endpoint(self) -> bool:
        """Whether image columns use /images/generations (else a chat completion)."""
        if self.image_api is not None:
            return self.image_api == "images"
        name = self.model.lower()
        return any(p in name for p in DIFFUSION_MODEL_PATTERNS)


class ProviderConfig(BaseModel):
    """An OpenAI-compatible endpoint that DataDesigner model configs name by `provider`
    (DataDesigner's ModelProvider). The key comes only from the environment variable named
    by `api_key`."""

    model_config = model_settings(extra="forbid", frozen=True, hide_input_in_errors=True)

    endpoint: str
    provider_type: Literal["openai"] = "openai"
    api_key: str | None = Field(default=None, description="environment variable holding the key")
    extra_body: dict[str, JsonValue] | None = None
    extra_headers: dict[str, str] | None = None

    @field_validator("api_key")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not is_identifier(v):
            # Never echoed: it is most likely the key itself.
            raise ValueError(
                "api_key must be the NAME of an environment variable holding the key (e.g."
                " NVIDIA_API_KEY); a literal key does not belong in a config file (value not"
                " shown)"
            )
        return v

    @field_validator("extra_headers")
    @classmethod
    def _no_headers(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v:
            # Headers usually carry credentials; nothing here may reach disk or a fingerprint.
            raise ValueError(
                "extra_headers are not supported (they may carry credentials, which dd-assets"
                " reads only from environment variables)"
            )
        return v


# DataDesigner's built-in providers, so configs naming them run without a providers: section.
BUILTIN_PROVIDERS = {
    "nvidia": ProviderConfig(
        endpoint="https://integrate.api.nvidia.com/v1", api_key="NVIDIA_API_KEY"
    ),
    "openai": ProviderConfig(endpoint="https://api.openai.com/v1", api_key="OPENAI_API_KEY"),
    "openrouter": ProviderConfig(
        endpoint="https://openrouter.ai/api/v1", api_key="OPENROUTER_API_KEY"
    ),
}
