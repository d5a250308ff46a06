"""Vectorised samplers. Each returns one value per global row index in `rows`, derived only from
that index and the column key (see rng.py)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from faker import Faker

from dd_assets.config.columns import SamplerColumnConfig
from dd_assets.config.samplers import (
    BernoulliSamplerParams,
    CategorySamplerParams,
    DatetimeSamplerParams,
    GaussianSamplerParams,
    PersonFromFakerSamplerParams,
    PoissonSamplerParams,
    SubcategorySamplerParams,
    UniformSamplerParams,
    UUIDSamplerParams,
)
from dd_assets.engine import rng

# Fixed, not "today": a person's birth date must not depend on when the row was generated.
PERSON_REFERENCE_DATE = dt.date(2026, 1, 1)


def _uniform_values(values: list[Any]) -> list[Any]:
    # Parquet columns hold one type; mixed category values become strings.
    return values if len({type(v) for v in values}) == 1 else [str(v) for v in values]


def category(p: CategorySamplerParams, key: int, rows: np.ndarray) -> list[Any]:
    values = _uniform_values(list(p.values))
    weights = np.asarray(p.weights if p.weights is not None else [1.0] * len(values), dtype=float)
    cdf = np.cumsum(weights) / weights.sum()
    idx = np.minimum(np.searchsorted(cdf, rng.uniform(key, rows), side="right"), len(values) - 1)
    return [values[i] for i in idx.tolist()]


def subcategory(
    p: SubcategorySamplerParams, key: int, rows: np.ndarray, parent: list[Any]
) -> list[Any]:
    u = rng.uniform(key, rows)
    out: list[Any] = [None] * len(parent)
    for i, (pv, ui) in enumerate(zip(parent, u.tolist(), strict=True)):
        choices = p.values.get(str(pv))
        if choices is None:
            raise ValueError(f"no subcategory values for parent value {pv!r}")
        out[i] = choices[int(ui * len(choices))]
    # Mixed types are decided over ALL the values, as the schema is: never by what a row group drew.
    every = [v for vs in p.values.values() for v in vs]
    if len({type(v) for v in every}) > 1:
        out = [str(v) for v in out]
    return out


def uniform(p: UniformSamplerParams, key: int, rows: np.ndarray, as_int: bool) -> np.ndarray:
    u = rng.uniform(key, rows)
    if as_int:
        lo, hi = math.ceil(p.low), math.floor(p.high)
        if hi < lo:
            raise ValueError(f"no integer lies in [{p.low}, {p.high}]")
        return (lo + np.floor(u * (hi - lo + 1))).astype(np.int64)
    v = p.low + u * (p.high - p.low)
    return np.round(v, p.decimal_places) if p.decimal_places is not None else v


def gaussian(p: GaussianSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    u1, u2 = rng.uniform(key, rows, 0), rng.uniform(key, rows, 1)
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    v = p.mean + p.stddev * z
    return np.round(v, p.decimal_places) if p.decimal_places is not None else v


def bernoulli(p: BernoulliSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    return (rng.uniform(key, rows) < p.p).astype(np.int64)


@lru_cache(maxsize=64)
def _poisson_table(mean: float) -> tuple[int, np.ndarray]:
    # Inverse-CDF table over mean +- 12 sd: mass outside is far below float resolution.
    sd = math.sqrt(mean)
    lo = max(0, math.floor(mean - 12 * sd - 10))
    hi = math.ceil(mean + 12 * sd + 10)
    k = np.arange(lo, hi + 1, dtype=float)
    log_fact = math.lgamma(lo + 1) + np.concatenate(([0.0], np.cumsum(np.log(k[1:]))))
    pmf = np.exp(k * math.log(mean) - mean - log_fact)
    cdf = np.cumsum(pmf)
    return lo, cdf / cdf[-1]


def poisson(p: PoissonSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    lo, cdf = _poisson_table(p.mean)
    idx = np.minimum(np.searchsorted(cdf, rng.uniform(key, rows), side="right"), len(cdf) - 1)
    return (lo + idx).astype(np.int64)


def uuids(p: UUIDSamplerParams, key: int, rows: np.ndarray) -> list[str]:
    hi = rng.bits(key, rows, 0).tolist()
    lo = rng.bits(key, rows, 1).tolist()
    out = []
    prefix = p.prefix or ""
    for h, low in zip(hi, lo, strict=True):
        # RFC 4122 version 4 / variant bits, so the values are well-formed UUIDs.
        n = (h << 64) | low
        n = (n & ~(0xF << 76)) | (4 << 76)
        n = (n & ~(0xC << 60)) | (0x8 << 60)
        u = uuid.UUID(int=n)
        s = u.hex[:16] if p.short_form else str(u)
        out.append(prefix + (s.upper() if p.uppercase else s))
    return out


_DT_UNITS = {"Y": "Y", "M": "M", "D": "D", "h": "h", "m": "m", "s": "s"}


def _naive_utc(t: dt.datetime) -> dt.datetime:
    # Timestamps are stored naive (UTC); an aware bound is converted, not just stripped.
    return t if t.tzinfo is None else t.astimezone(dt.UTC).replace(tzinfo=None)


def datetimes(p: DatetimeSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    unit = _DT_UNITS[p.unit]
    start_us = np.datetime64(_naive_utc(p.start), "us")
    start = start_us.astype(f"datetime64[{unit}]")  # truncates: round up to stay >= start
    if start < start_us:
        start = start + np.timedelta64(1, unit)
    end = np.datetime64(_naive_utc(p.end), "us").astype(f"datetime64[{unit}]")
    span = int((end - start).astype(np.int64))
    if span < 0:
        raise ValueError(f"no whole {p.unit!r} unit lies in [{p.start}, {p.end}]")
    offs = np.floor(rng.uniform(key, rows) * (span + 1)).astype(np.int64)
    return (start + offs.astype(f"timedelta64[{unit}]")).astype("datetime64[s]")


@lru_cache(maxsize=16)
def _faker(locale: str) -> Faker:
    return Faker(locale)


def persons(p: PersonFromFakerSamplerParams, key: int, rows: np.ndarray) -> list[dict[str, Any]]:
    fake = _faker(p.locale)
    seeds = rng.bits(key, rows, 0).tolist()
    u_sex = rng.uniform(key, rows, 1).tolist()
    u_age = rng.uniform(key, rows, 2).tolist()
    u_day = rng.uniform(key, rows, 3).tolist()
    ids = rng.bits(key, rows, 4).tolist()
    lo, hi = p.age_range
    out = []
    for seed, us, ua, ud, idb in zip(seeds, u_sex, u_age, u_day, ids, strict=True):
        fake.seed_instance(seed)
        sex = p.sex or ("Female" if us < 0.5 else "Male")
        age = lo + int(ua * (hi - lo + 1))
        birth = PERSON_REFERENCE_DATE - dt.timedelta(days=int(age * 365.25 + ud * 365))
        first = fake.first_name_female() if sex == "Female" else fake.first_name_male()
        last = fake.last_name()
        state = getattr(fake, "state", None)
        out.append(
            {
                "uuid": str(uuid.UUID(int=(seed << 64) | idb, version=4)),
                "first_name": first,
                "last_name": last,
                "sex": sex,
                "age": age,
                "birth_date": birth.isoformat(),
                "email_address": f"{first}.{last}@{fake.free_email_domain()}".lower(),
                "phone_number": fake.phone_number(),
                "street_address": fake.street_address(),
                "city": p.city or fake.city(),
                "state": state() if state else None,
                "zipcode": fake.postcode(),
                "country": fake.current_country() if p.locale == "en_US" else fake.country(),
                "occupation": fake.job(),
                "locale": p.locale,
            }
        )
    return out


def _convert(values: Any, convert_to: str | None, sampler_type: str) -> Any:
    if convert_to is None:
        return values
    if sampler_type == "datetime":
        return [v.strftime(convert_to) for v in values.astype(object)]
    arr = np.asarray(values)
    if convert_to == "int":
        return np.floor(arr).astype(np.int64)
    if convert_to == "float":
        return arr.astype(np.float64)
    return [str(v) for v in arr.tolist()]


def sample_column(
    col: SamplerColumnConfig, key: int, rows: np.ndarray, lookup: Callable[[str], list[Any]]
) -> Any:
    """Values for a sampler column; `lookup` gives already generated columns (subcategory parents)."""
    p = col.params
    if isinstance(p, CategorySamplerParams):
        values: Any = category(p, key, rows)
    elif isinstance(p, SubcategorySamplerParams):
        values = subcategory(p, key, rows, lookup(p.category))
    elif isinstance(p, UniformSamplerParams):
        values = uniform(p, key, rows, as_int=col.convert_to == "int")
        if col.convert_to == "int":
            return values
    elif isinstance(p, GaussianSamplerParams):
        values = gaussian(p, key, rows)
    elif isinstance(p, BernoulliSamplerParams):
        values = bernoulli(p, key, rows)
    elif isinstance(p, PoissonSamplerParams):
        values = poisson(p, key, rows)
    elif isinstance(p, UUIDSamplerParams):
        values = uuids(p, key, rows)
    elif isinstance(p, DatetimeSamplerParams):
        values = datetimes(p, key, rows)
    elif isinstance(p, PersonFromFakerSamplerParams):
        values = persons(p, key, rows)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unsupported sampler {type(p).__name__}")
    return _convert(values, col.convert_to, p.sampler_type)
