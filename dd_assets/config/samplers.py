"""Sampler parameter models, named as in DataDesigner so its configs carry over."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategorySamplerParams(_Params):
    sampler_type: Literal["category"] = "category"
    values: list[str | int | float | bool] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> CategorySamplerParams:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but values has {len(self.values)};"
                    " give one weight per value"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative and sum to more than 0")
        return self


class SubcategorySamplerParams(_Params):
    sampler_type: Literal["subcategory"] = "subcategory"
    category: str = Field(description="name of the parent `category` sampler column")
    values: dict[str, list[str | int | float | bool]]

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        # Parent values are looked up as str(value), and YAML reads `1:` or `true:` as int / bool
        # keys: accept them (category values may be numbers) instead of "should be a valid string".
        if not isinstance(v, dict):
            return v
        out: dict[Any, Any] = {}
        for k, vals in v.items():
            key = str(k) if isinstance(k, int | float | bool) else k
            if key in out:
                raise ValueError(f"parent value {key!r} is given twice (as {k!r} and as text)")
            out[key] = vals
        return out

    @model_validator(mode="after")
    def _non_empty(self) -> SubcategorySamplerParams:
        empty = [k for k, v in self.values.items() if not v]
        if empty:
            raise ValueError(f"values for parent value(s) {empty} are empty; give at least one")
        return self


class UniformSamplerParams(_Params):
    sampler_type: Literal["uniform"] = "uniform"
    low: float
    high: float
    decimal_places: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _order(self) -> UniformSamplerParams:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class GaussianSamplerParams(_Params):
    sampler_type: Literal["gaussian"] = "gaussian"
    mean: float
    stddev: float = Field(ge=0)
    decimal_places: int | None = Field(default=None, ge=0)


class BernoulliSamplerParams(_Params):
    sampler_type: Literal["bernoulli"] = "bernoulli"
    p: float = Field(ge=0, le=1)


class PoissonSamplerParams(_Params):
    sampler_type: Literal["poisson"] = "poisson"
    mean: float = Field(gt=0, le=1e7)


class UUIDSamplerParams(_Params):
    sampler_type: Literal["uuid"] = "uuid"
    prefix: str | None = None
    short_form: bool = False
    uppercase: bool = False


class DatetimeSamplerParams(_Params):
    sampler_type: Literal["datetime"] = "datetime"
    start: dt.datetime
    end: dt.datetime
    unit: Literal["Y", "M", "D", "h", "m", "s"] = "D"

    @model_validator(mode="after")
    def _order(self) -> DatetimeSamplerParams:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not be before start ({self.start})")
        return self


class PersonFromFakerSamplerParams(_Params):
    """Faker-backed people. DataDesigner's `person` needs a managed dataset download; ours maps
    `person` to this sampler so its configs still validate."""

    sampler_type: Literal["person_from_faker"] = "person_from_faker"
    locale: str = "en_US"
    sex: Literal["Male", "Female"] | None = None
    age_range: tuple[int, int] = (18, 114)
    city: str | None = None

    @model_validator(mode="after")
    def _ages(self) -> PersonFromFakerSamplerParams:
        lo, hi = self.age_range
        if lo < 0 or hi < lo:
            raise ValueError(
                f"age_range {list(self.age_range)} must be [min, max] with 0 <= min <= max"
            )
        return self


SamplerParams = Annotated[
    CategorySamplerParams
    | SubcategorySamplerParams
    | UniformSamplerParams
    | GaussianSamplerParams
    | BernoulliSamplerParams
    | PoissonSamplerParams
    | UUIDSamplerParams
    | DatetimeSamplerParams
    | PersonFromFakerSamplerParams,
    Field(discriminator="sampler_type"),
]

SAMPLER_ALIASES = {"person": "person_from_faker"}
SAMPLER_TYPES = (
    "category",
    "subcategory",
    "uniform",
    "gaussian",
    "bernoulli",
    "poisson",
    "uuid",
    "datetime",
    "person_from_faker",
)


def inject_sampler_type(data: Any) -> Any:
    """DataDesigner lets `params` omit sampler_type; copy the column's into it before validation."""
    if not isinstance(data, dict):
        return data
    st = data.get("sampler_type")
    if isinstance(st, str):
        st = SAMPLER_ALIASES.get(st, st)
        data = {**data, "sampler_type": st}
        params = data.get("params", {})
        if params is None:
            params = {}
        if isinstance(params, dict):
            data["params"] = {**params, "sampler_type": params.get("sampler_type", st)}
    return data
