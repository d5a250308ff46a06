"""Sampler parameter models, named as in DataDesigner so its configs carry over."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from dd_assets.config.base import Bool, Float, Int, Scalar, added_field, model_settings
from dd_assets.config.limits import MAX_DECIMAL_PLACES


class _Params(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)


class CategorySamplerParams(_Params):
    sampler_type: Literal["category"] = "category"
    values: list[Scalar] = Field(min_length=1)
    weights: list[Float] | None = None

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
    values: dict[str, list[Scalar]]

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
    low: Float
    high: Float
    decimal_places: Int | None = Field(default=None, ge=0, le=MAX_DECIMAL_PLACES)

    @model_validator(mode="after")
    def _order(self) -> UniformSamplerParams:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        if not math.isfinite(self.high - self.low):
            raise ValueError(f"the range {self.low}..{self.high} is too wide for a float64")
        return self


class GaussianSamplerParams(_Params):
    sampler_type: Literal["gaussian"] = "gaussian"
    mean: Float
    stddev: Float = Field(ge=0)
    decimal_places: Int | None = Field(default=None, ge=0, le=MAX_DECIMAL_PLACES)


class BernoulliSamplerParams(_Params):
    sampler_type: Literal["bernoulli"] = "bernoulli"
    p: Float = Field(ge=0, le=1)


class PoissonSamplerParams(_Params):
    sampler_type: Literal["poisson"] = "poisson"
    mean: Float = Field(gt=0, le=1e7)


class UUIDSamplerParams(_Params):
    sampler_type: Literal["uuid"] = "uuid"
    prefix: str | None = None
    short_form: Bool = False
    uppercase: Bool = False
    # DataDesigner writes 32 hex digits without hyphens, and 8 of them in short form; these
    # two options say so explicitly (the import sets them), the defaults keep dd-assets' format.
    format: Literal["hyphenated", "hex"] = added_field(
        "hyphenated", description="full form: canonical 8-4-4-4-12, or 32 hex digits"
    )
    short_length: Int = added_field(16, ge=1, le=32, description="hex digits in short form")


class BinomialSamplerParams(_Params):
    sampler_type: Literal["binomial"] = "binomial"
    n: Int = Field(ge=0, le=10**9)
    p: Float = Field(ge=0, le=1)


def _scipy_distribution(name: str, params: dict[str, Any]) -> None:
    """Refuse a name scipy.stats does not have, or parameters it does not take, at config time
    (DataDesigner only finds out when generating)."""
    from scipy import stats  # imported only by configs that use it: it takes a while

    dist = getattr(stats, name, None)
    if not isinstance(dist, stats.rv_continuous | stats.rv_discrete):
        raise ValueError(
            f"dist_name {name!r} is not a univariate scipy.stats distribution (e.g. expon, beta,"
            " gamma, lognorm, poisson)"
        )
    try:
        # dist.ppf(q, **params), not dist(**params).ppf(q): the same checks and answer, without
        # building a frozen distribution (scipy writes its docstrings: ~5-20 ms a call).
        median = float(dist.ppf(0.5, **params))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dist_params {params} do not fit scipy.stats.{name}: {exc}") from None
    if math.isnan(median):  # scipy's answer to parameters out of the distribution's domain
        raise ValueError(f"dist_params {params} are not valid for scipy.stats.{name}")


def is_discrete(dist_name: str) -> bool:
    """Whether a scipy.stats distribution gives integers (its column is then int64)."""
    from scipy import stats

    return isinstance(getattr(stats, dist_name, None), stats.rv_discrete)


class ScipySamplerParams(_Params):
    """Any univariate scipy.stats distribution, drawn by its inverse CDF of the row's uniform
    number, so a row's value stays a function of (column, row) alone."""

    sampler_type: Literal["scipy"] = "scipy"
    dist_name: str
    dist_params: dict[str, Float] = Field(default_factory=dict)
    decimal_places: Int | None = Field(default=None, ge=0, le=MAX_DECIMAL_PLACES)

    @model_validator(mode="after")
    def _known(self) -> ScipySamplerParams:
        _scipy_distribution(self.dist_name, self.dist_params)
        return self


class BernoulliMixtureSamplerParams(_Params):
    """0 with probability 1 - p, else a draw from a scipy.stats distribution."""

    sampler_type: Literal["bernoulli_mixture"] = "bernoulli_mixture"
    p: Float = Field(ge=0, le=1)
    dist_name: str
    dist_params: dict[str, Float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> BernoulliMixtureSamplerParams:
        _scipy_distribution(self.dist_name, self.dist_params)
        return self


class TimedeltaSamplerParams(_Params):
    """A datetime: the reference column's plus a whole number of `unit`s in [dt_min, dt_max)."""

    sampler_type: Literal["timedelta"] = "timedelta"
    dt_min: Int
    dt_max: Int
    reference_column_name: str
    unit: Literal["D", "h", "m", "s"] = "D"

    @model_validator(mode="after")
    def _order(self) -> TimedeltaSamplerParams:
        if self.dt_max <= self.dt_min:
            raise ValueError(
                f"dt_max ({self.dt_max}) must be > dt_min ({self.dt_min}); dt_max is excluded"
            )
        return self


class DatetimeSamplerParams(_Params):
    sampler_type: Literal["datetime"] = "datetime"
    start: dt.datetime
    end: dt.datetime
    unit: Literal["Y", "M", "D", "h", "m", "s"] = "D"
    # `units`: whole units evenly in [start, end], both included (dd-assets). `seconds`:
    # DataDesigner's draw, whole seconds in [start, end) floored to the unit (so with Y or M a
    # value can fall before start).
    draw: Literal["units", "seconds"] = added_field("units")

    @model_validator(mode="after")
    def _order(self) -> DatetimeSamplerParams:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError(
                f"start ({self.start}) and end ({self.end}) must both have a time zone (such as"
                " Z or +02:00) or both have none"
            )
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not be before start ({self.start})")
        return self


@functools.cache
def faker_locales() -> frozenset[str]:
    """Faker's locales, read from its providers' folders (exactly `faker.config.AVAILABLE_LOCALES`)
    because importing Faker costs ~0.2 s that `validate` should not pay, and an unknown locale
    must be a config error, not Faker's AttributeError in the middle of a run."""
    spec = importlib.util.find_spec("faker")
    roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    return frozenset(
        locale.name
        for root in roots
        for provider in (Path(root) / "providers").iterdir()
        if provider.is_dir() and not provider.name.startswith("_")
        for locale in provider.iterdir()
        if locale.is_dir() and not locale.name.startswith("_")
    )


class PersonFromFakerSamplerParams(_Params):
    """Faker-backed people. DataDesigner's `person` needs a managed dataset download; ours maps
    `person` to this sampler so its configs still validate."""

    sampler_type: Literal["person_from_faker"] = "person_from_faker"
    locale: str = "en_US"
    sex: Literal["Male", "Female"] | None = None
    age_range: tuple[Int, Int] = (18, 114)
    city: str | list[str] | None = Field(
        default=None, description="one city, or one per row of a list"
    )
    # DataDesigner's person records have other fields (street_number, postcode, marital_status,
    # ...); `datadesigner` gives those names, the default keeps dd-assets' record.
    fields: Literal["dd-assets", "datadesigner"] = added_field("dd-assets")

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, locale: str) -> str:
        if locale not in faker_locales():
            raise ValueError(
                f"unknown Faker locale {locale!r}; use one of Faker's locales, e.g. en_US, de_DE, "
                "fr_FR, ja_JP"
            )
        return locale

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
    | PersonFromFakerSamplerParams
    | BinomialSamplerParams
    | ScipySamplerParams
    | BernoulliMixtureSamplerParams
    | TimedeltaSamplerParams,
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
    "binomial",
    "scipy",
    "bernoulli_mixture",
    "timedelta",
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
        conds = data.get("conditional_params")
        if isinstance(conds, dict):
            data["conditional_params"] = {
                k: {
                    **v,
                    "sampler_type": SAMPLER_ALIASES.get(
                        v.get("sampler_type", st), v.get("sampler_type", st)
                    ),
                }
                if isinstance(v, dict)
                else v
                for k, v in conds.items()
            }
    return data
