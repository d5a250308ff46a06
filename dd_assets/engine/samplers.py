"""Vectorised samplers. Each returns one value per global row index in `rows`, derived only from
that index and the column key (see rng.py)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from dd_assets.config.columns import DATETIME_SAMPLERS, SamplerColumnConfig, condition_names
from dd_assets.config.samplers import (
    BernoulliMixtureSamplerParams,
    BernoulliSamplerParams,
    BinomialSamplerParams,
    CategorySamplerParams,
    DatetimeSamplerParams,
    GaussianSamplerParams,
    PersonFromFakerSamplerParams,
    PoissonSamplerParams,
    ScipySamplerParams,
    SubcategorySamplerParams,
    TimedeltaSamplerParams,
    UniformSamplerParams,
    UUIDSamplerParams,
    is_discrete,
)
from dd_assets.engine import rng
from dd_assets.engine.expressions import CellError, render_cells

if TYPE_CHECKING:
    from faker import Faker

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
    """`as_int`: integers evenly over [low, high] (dd-assets' convert_to: int)."""
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
    hi = rng.bits(key, rows, 0)
    lo = rng.bits(key, rows, 1)
    # RFC 4122 version 4 / variant bits, so the values are well-formed UUIDs: bits 76..79 of
    # the 128-bit number (12..15 of the high word) = 4, bits 62..63 (of the low word) = 0b10.
    hi = (hi & ~np.uint64(0xF << 12)) | np.uint64(4 << 12)
    lo = (lo & ~np.uint64(0xC << 60)) | np.uint64(0x8 << 60)
    # uuid.UUID(int=n).hex for every row at once: the 16 big-endian bytes of each, as hex.
    digits = np.stack([hi, lo], axis=1).astype(">u8").tobytes().hex()
    hexes = [digits[i : i + 32] for i in range(0, len(digits), 32)]
    if p.short_form:
        values = [h[: p.short_length] for h in hexes]
    elif p.format == "hex":
        values = hexes
    else:  # str(uuid.UUID(...)): 8-4-4-4-12
        values = [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes]
    if p.uppercase:
        values = [v.upper() for v in values]
    prefix = p.prefix or ""
    return [prefix + v for v in values] if prefix else values


_DT_UNITS = {"Y": "Y", "M": "M", "D": "D", "h": "h", "m": "m", "s": "s"}


def _naive_utc(t: dt.datetime) -> dt.datetime:
    # Timestamps are stored naive (UTC); an aware bound is converted, not just stripped.
    return t if t.tzinfo is None else t.astimezone(dt.UTC).replace(tzinfo=None)


def datetimes(p: DatetimeSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    unit = _DT_UNITS[p.unit]
    if p.draw == "seconds":
        lo = np.datetime64(_naive_utc(p.start), "s")
        span = int((np.datetime64(_naive_utc(p.end), "s") - lo).astype(np.int64))
        offs = np.floor(rng.uniform(key, rows) * max(span, 1)).astype(np.int64)
        drawn = lo + offs.astype("timedelta64[s]")
        return drawn.astype(f"datetime64[{unit}]").astype("datetime64[s]")
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
    from faker import Faker  # here: only person samplers use it (~0.08 s of CPU to import)

    return Faker(locale)


def persons(p: PersonFromFakerSamplerParams, key: int, rows: np.ndarray) -> list[dict[str, Any]]:
    fake = _faker(p.locale)
    seeds = rng.bits(key, rows, 0).tolist()
    u_sex = rng.uniform(key, rows, 1).tolist()
    u_age = rng.uniform(key, rows, 2).tolist()
    u_day = rng.uniform(key, rows, 3).tolist()
    ids = rng.bits(key, rows, 4).tolist()
    lo, hi = p.age_range
    if p.fields == "datadesigner":
        return _dd_persons(p, key, rows, fake, seeds, u_sex, u_age, u_day, ids)
    out = []
    cities = _cities(p, key, rows)
    for seed, us, ua, ud, idb, city in zip(seeds, u_sex, u_age, u_day, ids, cities, strict=True):
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
                "city": city or fake.city(),
                "state": state() if state else None,
                "zipcode": fake.postcode(),
                "country": fake.current_country() if p.locale == "en_US" else fake.country(),
                "occupation": fake.job(),
                "locale": p.locale,
            }
        )
    return out


def _cities(p: PersonFromFakerSamplerParams, key: int, rows: np.ndarray) -> list[str | None]:
    if isinstance(p.city, list):
        u = rng.uniform(key, rows, 5).tolist()
        return [p.city[int(x * len(p.city))] for x in u]
    return [p.city] * len(rows)


# DataDesigner's person_from_faker record: its field names and order, and its category labels.
DD_MARITAL = ("married_present", "divorced", "never_married", "separated", "widowed")
DD_EDUCATION = (
    "secondary_education", "some_college", "bachelors", "associates", "graduate", "doctorate",
)  # fmt: skip
DD_COLLEGE = frozenset({"bachelors", "graduate", "doctorate"})
DD_BACHELORS = ("stem", "business", "education", "arts_humanities", "stem_related")


def _dd_persons(
    p: PersonFromFakerSamplerParams,
    key: int,
    rows: np.ndarray,
    fake: Faker,
    seeds: list[int],
    u_sex: list[float],
    u_age: list[float],
    u_day: list[float],
    ids: list[int],
) -> list[dict[str, Any]]:
    lo, hi = p.age_range
    u_cat = [rng.uniform(key, rows, s).tolist() for s in (6, 7, 8)]
    out = []
    for i, city in enumerate(_cities(p, key, rows)):
        fake.seed_instance(seeds[i])
        sex = p.sex or ("Female" if u_sex[i] < 0.5 else "Male")
        age = lo + int(u_age[i] * (hi - lo + 1))
        birth = PERSON_REFERENCE_DATE - dt.timedelta(days=int(age * 365.25 + u_day[i] * 365))
        state = getattr(fake, "state", None)
        education = DD_EDUCATION[int(u_cat[1][i] * len(DD_EDUCATION))]
        out.append(
            {
                "uuid": str(uuid.UUID(int=(seeds[i] << 64) | ids[i], version=4)),
                "locale": p.locale,
                "first_name": fake.first_name_female()
                if sex == "Female"
                else fake.first_name_male(),
                "last_name": fake.last_name(),
                "middle_name": None,
                "sex": sex,
                "street_number": str(fake.building_number()),
                "street_name": fake.street_name(),
                "city": city or fake.city(),
                "state": state() if state else None,
                "postcode": str(fake.postcode()),
                "age": age,
                "birth_date": birth.isoformat(),
                "country": fake.country(),
                "marital_status": DD_MARITAL[int(u_cat[0][i] * len(DD_MARITAL))],
                "education_level": education,
                "unit": "",
                "occupation": fake.job(),
                "phone_number": fake.phone_number() if age >= 18 else None,
                "bachelors_field": DD_BACHELORS[int(u_cat[2][i] * len(DD_BACHELORS))]
                if education in DD_COLLEGE
                else "no_degree",
            }
        )
    return out


def _ppf(dist_name: str, dist_params: dict[str, float], u: np.ndarray) -> np.ndarray:
    """Inverse CDF of a scipy.stats distribution: one uniform number per row in, one value out."""
    from scipy import stats

    dist = getattr(stats, dist_name)(**dist_params)
    # u is in [0, 1); ppf(0) is the lower end of the support, which may be -inf.
    values = dist.ppf(np.maximum(u, 2.0**-53))
    if is_discrete(dist_name):
        return values.astype(np.int64)
    return values


def binomial(p: BinomialSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    return _ppf("binom", {"n": p.n, "p": p.p}, rng.uniform(key, rows))


def scipy_values(p: ScipySamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    v = _ppf(p.dist_name, p.dist_params, rng.uniform(key, rows))
    return np.round(v, p.decimal_places) if p.decimal_places is not None else v


def bernoulli_mixture(p: BernoulliMixtureSamplerParams, key: int, rows: np.ndarray) -> np.ndarray:
    hit = rng.uniform(key, rows, 0) < p.p
    v = _ppf(p.dist_name, p.dist_params, rng.uniform(key, rows, 1))
    return np.where(hit, v, 0).astype(v.dtype)


_TD_UNITS = {"D": "D", "h": "h", "m": "m", "s": "s"}


def _as_datetime64(value: Any, column: str) -> np.datetime64:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"reference column {column!r} holds {value!r}, which is not an ISO date or time;"
                " give the reference datetime column an ISO convert_to (or none)"
            ) from None
    if isinstance(value, dt.datetime):
        value = _naive_utc(value)
    if not isinstance(value, dt.date | np.datetime64):
        raise ValueError(f"reference column {column!r} holds {value!r}, not a datetime")
    return np.datetime64(value, "s")


def timedeltas(p: TimedeltaSamplerParams, key: int, rows: np.ndarray, ref: list[Any]) -> np.ndarray:
    span = p.dt_max - p.dt_min
    offs = p.dt_min + np.floor(rng.uniform(key, rows) * span).astype(np.int64)
    base = np.array(
        [_as_datetime64(v, p.reference_column_name) for v in ref], dtype="datetime64[s]"
    )
    return (base + offs.astype(f"timedelta64[{_TD_UNITS[p.unit]}]")).astype("datetime64[s]")


def _convert(
    values: Any, convert_to: str | None, sampler_type: str, rounding: str = "default"
) -> Any:
    if convert_to is None:
        return values
    if sampler_type in DATETIME_SAMPLERS:
        return [v.strftime(convert_to) for v in values.astype(object)]
    arr = np.asarray(values)
    if convert_to == "int":
        return (np.round(arr) if rounding == "half_even" else np.floor(arr)).astype(np.int64)
    if convert_to == "float":
        return arr.astype(np.float64)
    return [str(v) for v in arr.tolist()]


def _sample(
    col: SamplerColumnConfig,
    p: Any,
    key: int,
    rows: np.ndarray,
    lookup: Callable[[str], list[Any]],
) -> Any:
    """Values of one params set for `rows` (`lookup` gives other columns for the same rows)."""
    if isinstance(p, CategorySamplerParams):
        values: Any = category(p, key, rows)
    elif isinstance(p, SubcategorySamplerParams):
        values = subcategory(p, key, rows, lookup(p.category))
    elif isinstance(p, UniformSamplerParams):
        even_ints = col.convert_to == "int" and col.int_rounding == "default"
        values = uniform(p, key, rows, as_int=even_ints)
        if even_ints:
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
    elif isinstance(p, BinomialSamplerParams):
        values = binomial(p, key, rows)
    elif isinstance(p, ScipySamplerParams):
        values = scipy_values(p, key, rows)
    elif isinstance(p, BernoulliMixtureSamplerParams):
        values = bernoulli_mixture(p, key, rows)
    elif isinstance(p, TimedeltaSamplerParams):
        values = timedeltas(p, key, rows, lookup(p.reference_column_name))
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unsupported sampler {type(p).__name__}")
    return _convert(values, col.convert_to, p.sampler_type, col.int_rounding)


def sample_column(
    col: SamplerColumnConfig, key: int, rows: np.ndarray, lookup: Callable[[str], list[Any]]
) -> Any:
    """Values for a sampler column; `lookup` gives already generated columns of the row group
    (subcategory parents, timedelta references, conditions, constraint columns)."""
    if not col.conditional_params and not col.constraints:
        return _sample(col, col.params, key, rows, lookup)
    choice = _conditions(col, rows, lookup)
    values = _sample_by_condition(col, choice, key, rows, lookup)
    if col.constraints:
        values = _rejection(col, choice, key, rows, lookup, values)
    return values


MAX_REDRAWS = 1000


def _conditions(
    col: SamplerColumnConfig, rows: np.ndarray, lookup: Callable[[str], list[Any]]
) -> np.ndarray:
    """Per row, which params apply: -1 for `params`, k for the k-th condition; the last true
    condition wins, as in DataDesigner."""
    choice = np.full(len(rows), -1, dtype=np.int64)
    for k, cond in enumerate(col.conditional_params):  # in sorted order: see the config field
        names = sorted(condition_names(cond))
        columns = {n: [_condition_value(v) for v in lookup(n)] for n in names}
        texts = render_cells("{{ " + cond + " }}", columns, len(rows))
        for i, text in enumerate(texts):
            if isinstance(text, CellError):
                raise ValueError(f"condition {cond!r} fails on row {int(rows[i])}: {text}")
            if text.strip() == "True":
                choice[i] = k
    return choice


def _condition_value(v: Any) -> Any:
    # DataDesigner's conditions see datetimes as ISO text.
    return v.isoformat() if isinstance(v, dt.datetime | dt.date) else v


def _sample_by_condition(
    col: SamplerColumnConfig,
    choice: np.ndarray,
    key: int,
    rows: np.ndarray,
    lookup: Callable[[str], list[Any]],
) -> list[Any]:
    params = [col.params, *col.conditional_params.values()]
    out: list[Any] = [None] * len(rows)
    for k in np.unique(choice).tolist():
        pos = np.flatnonzero(choice == k)
        sub = _sub_lookup(lookup, pos)
        vals = _sample(col, params[k + 1], key, rows[pos], sub)
        vals = vals.tolist() if isinstance(vals, np.ndarray) else vals
        for i, v in zip(pos.tolist(), vals, strict=True):
            out[i] = v
    return out


def _sub_lookup(lookup: Callable[[str], list[Any]], pos: np.ndarray) -> Callable[[str], list[Any]]:
    def sub(name: str) -> list[Any]:
        values = lookup(name)
        return [values[i] for i in pos.tolist()]

    return sub


_OPS = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}


def _failing(
    col: SamplerColumnConfig, values: list[Any], pos: np.ndarray, lookup: Callable[[str], list[Any]]
) -> np.ndarray:
    """Positions (into pos) whose values break a constraint."""
    v = np.asarray([values[i] for i in pos.tolist()], dtype=float)
    bad = np.zeros(len(pos), dtype=bool)
    for c in col.constraints:
        if c.column is not None:
            other = lookup(c.column)
            rhs = np.asarray([other[i] for i in pos.tolist()], dtype=float)
        else:
            rhs = np.full(len(pos), c.value, dtype=float)
        bad |= ~_OPS[c.operator](v, rhs)
    return bad


def _rejection(
    col: SamplerColumnConfig,
    choice: np.ndarray,
    key: int,
    rows: np.ndarray,
    lookup: Callable[[str], list[Any]],
    values: list[Any],
) -> list[Any]:
    """Redraw, row by row, the values that break a constraint: the n-th redraw of a row uses
    the n-th subkey, so a row's value depends on its own draws only (never on its row group)."""
    pos = np.arange(len(rows))
    for attempt in range(1, MAX_REDRAWS + 1):
        pos = pos[_failing(col, values, pos, lookup)]
        if not len(pos):
            return values
        redrawn = _sample_by_condition(
            col, choice[pos], rng.subkey(key, attempt), rows[pos], _sub_lookup(lookup, pos)
        )
        for i, v in zip(pos.tolist(), redrawn, strict=True):
            values[i] = v
    pos = pos[_failing(col, values, pos, lookup)]
    if len(pos):
        rules = ", ".join(
            f"{c.operator} {c.value if c.column is None else c.column}" for c in col.constraints
        )
        raise ValueError(
            f"constraints ({rules}) rejected {MAX_REDRAWS + 1} draws in a row for row"
            f" {int(rows[pos[0]])}; check that the sampler can produce values that satisfy them"
        )
    return values
