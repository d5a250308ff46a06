"""A stage profile as people read it: one self-contained HTML file with charts (`dd-assets report`),
tables for the terminal (`--format text`), and the plain data the Dagster materialization carries
(`profile_metadata`). It only formats a `StageProfile`; it computes nothing.

Charts are pygal SVG written inline (docs/decisions.md, "Report charts"): no script or style is
fetched, so the file opens offline, and a page of a dozen charts stays in the hundreds of KB."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from dd_assets.runners.profile.stage import StageProfile

BARS = "▁▂▃▄▅▆▇█"
CATEGORY_CHART_MAX = 20


# ---- one-line summaries -------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def sparkline(counts: list[int]) -> str:
    """Counts as block characters: a histogram that fits in a table cell (markdown, terminal)."""
    top = max(counts, default=0)
    if not top:
        return ""
    return "".join(
        BARS[0] if not c else BARS[max(1, round(c / top * (len(BARS) - 1)))] for c in counts
    )


def column_summary(c: dict[str, Any]) -> str:
    """What a person looks at first in a column, in one line."""
    dist = c["distribution_type"]
    if dist == "categorical" and c.get("top_values"):
        parts = []
        for v in c["top_values"][:6]:
            exp = v.get("expected_share")
            parts.append(
                f"{v['value']} {100 * v['share']:.1f}%"
                + (f" (cfg {100 * exp:.0f}%)" if exp is not None else "")
            )
        more = len(c["top_values"]) - 6
        return ", ".join(parts) + (f", +{more} more" if more > 0 else "")
    if dist in ("numerical", "datetime") and c.get("distribution"):
        d = c["distribution"]
        q = d["quantiles"]
        text = f"min {_fmt(d['min'])} · p50 {_fmt(q['p50'])} · max {_fmt(d['max'])}"
        if dist == "numerical":
            text += f" · mean {_fmt(d['mean'])}"
        return text
    if dist == "text" and c.get("length", {}).get("chars"):
        ch, tok = c["length"]["chars"], c["length"]["tokens"]
        return (
            f"chars p50 {_fmt(ch['quantiles']['p50'])} (max {_fmt(ch['max'])}) · tokens≈"
            f" {_fmt(tok.get('mean'))} mean · empty {_pct(c.get('percent_empty'))}"
        )
    if c.get("items"):
        return f"items per row: mean {_fmt(c['items']['mean'])}, max {_fmt(c['items']['max'])}"
    return ""


def _chart_counts(c: dict[str, Any]) -> list[int]:
    if c["distribution_type"] == "categorical" and c.get("top_values"):
        return [v["count"] for v in c["top_values"][:CATEGORY_CHART_MAX]]
    if c.get("distribution"):
        return c["distribution"]["histogram"]["counts"]
    if c.get("length", {}).get("chars"):
        return c["length"]["chars"]["histogram"]["counts"]
    return []


def column_rows(p: StageProfile) -> list[dict[str, Any]]:
    """The column overview: one row per (leaf) column."""
    rows = []
    for c in p.column_statistics:
        unique = c["num_unique"]
        rows.append(
            {
                "column": c["column_name"],
                "type": c["column_type"]
                + (f"/{c['sampler_type']}" if c.get("sampler_type") else ""),
                "dtype": c["simple_dtype"],
                "kind": c["distribution_type"],
                "null": _pct(c["percent_null"]),
                "unique": "-"
                if unique is None
                else f"{'' if c['num_unique_exact'] else '≈'}{unique} ({_pct(c['percent_unique'])})",
                "chart": sparkline(_chart_counts(c)),
                "summary": column_summary(c),
            }
        )
    return rows


def overview_rows(p: StageProfile) -> list[dict[str, Any]]:
    rows = [
        {"figure": "records", "value": f"{p.num_records} ({p.source.replace('_', ' ')})"},
        {"figure": "target_num_records", "value": p.target_num_records},
        {"figure": "percent_complete", "value": _pct(p.percent_complete)},
        {"figure": "row groups", "value": f"{p.row_groups_done} of {p.row_groups_total}"},
        {"figure": "planned rows", "value": p.planned_rows},
        {"figure": "dropped rows", "value": p.dropped_rows},
    ]
    if p.finalize:
        steps = ", ".join(
            f"{s.get('step')} {s.get('rows_in')}→{s.get('rows_out')}" for s in p.finalize["steps"]
        )
        rows.append({"figure": "finalize", "value": steps})
    for k, v in p.llm_usage.items():
        rows.append({"figure": k.removeprefix("llm_"), "value": "-" if v is None else v})
    return rows


def drift_rows(p: StageProfile) -> list[dict[str, Any]]:
    return [{"check": f.check, "finding": f.message} for f in p.drift]


def judge_rows(p: StageProfile) -> list[dict[str, Any]]:
    return [
        {
            "score": f"{j['column']}.{j['score']}",
            "mean": "-" if j["mean"] is None else _fmt(j["mean"]),
            "min_mean": "-" if j["min_mean"] is None else j["min_mean"],
            "distribution": " ".join(f"{k}:{v}" for k, v in j["counts"].items()),
            "chart": sparkline(list(j["counts"].values())),
        }
        for j in p.judge_scores
    ]


def text_sections(p: StageProfile) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, rows) tables for the terminal."""
    head = f"{p.workflow}/{p.stage} (fingerprint {p.fingerprint})"
    sections = [(f"{head}: overview", overview_rows(p)), (f"{head}: columns", column_rows(p))]
    if p.judge_scores:
        sections.append((f"{head}: judge scores", judge_rows(p)))
    if p.drop_reasons:
        sections.append(
            (
                f"{head}: dropped rows by reason",
                [{"reason": r, "rows": n} for r, n in p.drop_reasons.items()],
            )
        )
    checked = ", ".join(p.drift_checked) or "nothing configured"
    sections.append(
        (
            f"{head}: drift ({len(p.drift)} finding(s); checked {checked})",
            drift_rows(p) or [{"check": "-", "finding": "none"}],
        )
    )
    return sections


# ---- Dagster metadata (plain data; dagster/ turns it into MetadataValues) ------------------


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def profile_markdown(p: StageProfile) -> str:
    """The profile as one markdown document, small charts as block-character sparklines."""
    out = [
        f"### Profile of `{p.stage}` ({p.source.replace('_', ' ')}, {p.num_records} records,"
        f" {_pct(p.percent_complete)} of {p.target_num_records})",
        "",
        _md_table(column_rows(p)),
    ]
    if p.judge_scores:
        out += ["", "#### Judge scores", "", _md_table(judge_rows(p))]
    out += ["", f"#### Drift: {len(p.drift)} finding(s)", ""]
    out += [f"- {f.message}" for f in p.drift] or [
        f"- checked {', '.join(p.drift_checked) or 'nothing configured'}: all within thresholds"
    ]
    if p.drop_reasons:
        out += ["", f"#### Dropped rows: {p.dropped_rows}", ""]
        out += [_md_table([{"reason": r, "rows": n} for r, n in p.drop_reasons.items()])]
    return "\n".join(out)


def profile_metadata(p: StageProfile) -> dict[str, dict[str, Any]]:
    """{key: {"kind": "int"|"float"|"text"|"md"|"json"|"table", "value": ...}}: what the stage
    asset's materialization shows, in plain data (no Dagster here). Numbers are separate entries
    so the UI plots them over materializations."""
    md: dict[str, dict[str, Any]] = {
        "profile/records": {"kind": "int", "value": p.num_records},
        "profile/percent_complete": {"kind": "float", "value": p.percent_complete},
        "profile/dropped_rows": {"kind": "int", "value": p.dropped_rows},
        "profile/drift_findings": {"kind": "int", "value": len(p.drift)},
        "profile": {"kind": "md", "value": profile_markdown(p)},
        "profile/columns": {
            "kind": "table",
            "value": {
                "columns": list(column_rows(p)[0]) if p.column_statistics else [],
                "rows": column_rows(p),
            },
        },
    }
    if p.drift:
        md["profile/drift"] = {"kind": "json", "value": [f.message for f in p.drift]}
    if p.llm_usage:
        md["profile/llm_usage"] = {"kind": "json", "value": p.llm_usage}
    return md


# ---- HTML ---------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;
background:#fafbfc}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:15px;margin:0 0 6px}
.muted{color:#57606a;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:18px}.ok{color:#1a7f37}.warn{color:#9a6700}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.cols{display:grid;grid-template-columns:repeat(auto-fill,minmax(470px,1fr));
gap:14px}.col{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px}
.col svg{width:100%;height:auto}.spark{font-family:monospace;letter-spacing:-1px}
.drift{border-left:4px solid #bf8700;background:#fff8c5;padding:6px 10px;margin:6px 0}
"""


def _table_html(rows: list[dict[str, Any]], cls: str = "") -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{'spark' if c == 'chart' else cls}'>{html.escape(str(r[c]))}</td>"
            for c in cols
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _chart(c: dict[str, Any]) -> str:
    """An inline SVG chart of one column (empty when there is nothing to draw)."""
    import pygal  # only the report needs it; the profile and the metadata do not

    cfg = {
        "js": [],
        "disable_xml_declaration": True,
        "width": 460,
        "height": 240,
        "explicit_size": False,
        "show_legend": False,
        "margin": 8,
        "x_label_rotation": 30,
        "truncate_label": 14,
        "print_values": False,
    }
    dist = c["distribution_type"]
    if dist == "categorical" and c.get("top_values"):
        top = c["top_values"][:CATEGORY_CHART_MAX]
        has_expected = any("expected_share" in v for v in top)
        chart = pygal.Bar(**{**cfg, "show_legend": has_expected, "legend_at_bottom": True})
        chart.x_labels = [str(v["value"]) for v in top]
        chart.add("observed share", [round(v["share"], 4) for v in top])
        if has_expected:
            chart.add("configured weight", [round(v.get("expected_share", 0.0), 4) for v in top])
        return chart.render(is_unicode=True)
    hist = None
    title = ""
    if c.get("distribution"):
        hist = c["distribution"]["histogram"]
    elif c.get("length", {}).get("chars"):
        hist, title = c["length"]["chars"]["histogram"], "length in characters"
    elif c.get("items"):
        hist, title = c["items"]["histogram"], "items per row"
    if not hist or not hist["counts"]:
        return ""
    edges, counts = hist["edges"], hist["counts"]
    if dist == "datetime" or any(isinstance(e, str) for e in edges):
        chart = pygal.Bar(**cfg, x_labels_major_count=6, show_minor_x_labels=False)
        chart.x_labels = [str(e)[:10] for e in edges[:-1]]
        chart.add("rows", counts)
    else:
        chart = pygal.Histogram(**cfg)
        chart.add("rows", [(n, edges[i], edges[i + 1]) for i, n in enumerate(counts)])
    if title:
        chart.title = title
    return chart.render(is_unicode=True)


def _duration(amount: float, unit: str) -> str:
    seconds = amount * {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "days": 86400}[unit]
    for name, size in (("days", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds / size:.3g} {name}"
    return f"{seconds:.3g} s"


def _column_html(c: dict[str, Any]) -> str:
    stats: list[dict[str, Any]] = [
        {
            "figure": "type",
            "value": f"{c['column_type']} · {c['simple_dtype']} · {c['distribution_type']}",
        },
        {"figure": "null", "value": f"{c['num_null']} ({_pct(c['percent_null'])})"},
        {
            "figure": "unique",
            "value": "-"
            if c["num_unique"] is None
            else f"{'' if c['num_unique_exact'] else '≈'}{c['num_unique']} ({_pct(c['percent_unique'])})",
        },
    ]
    if "num_empty" in c:
        stats.append({"figure": "empty", "value": f"{c['num_empty']} ({_pct(c['percent_empty'])})"})
    d = c.get("distribution")
    if d:
        for k in ("min", "mean", "stddev", "median", "max"):
            if d.get(k) is not None:
                stats.append({"figure": k, "value": _fmt(d[k])})
        qs = " · ".join(f"{k} {_fmt(v)}" for k, v in d["quantiles"].items())
        err = d.get("quantile_error")
        stats.append(
            {"figure": "quantiles", "value": qs + (f" (±{_fmt(err)})" if err else " (exact)")}
        )
    length = c.get("length", {})
    if length.get("chars"):
        ch, tok = length["chars"], length["tokens"]
        stats.append(
            {
                "figure": "characters",
                "value": f"mean {_fmt(ch['mean'])} · p50 {_fmt(ch['quantiles']['p50'])} · p95 {_fmt(ch['quantiles']['p95'])} · max {_fmt(ch['max'])}",
            }
        )
        stats.append(
            {
                "figure": "tokens (estimated)",
                "value": f"mean {_fmt(tok['mean'])} · p50 {_fmt(tok['quantiles']['p50'])} · p95 {_fmt(tok['quantiles']['p95'])}",
            }
        )
    samples = "".join(f"<li>{html.escape(str(s))}</li>" for s in c.get("sample_values", []))
    return (
        f"<div class='col' data-column='{html.escape(c['column_name'])}'>"
        f"<h3>{html.escape(c['column_name'])}</h3>{_chart(c)}{_table_html(stats)}"
        + (f"<p class='muted'>samples:</p><ul>{samples}</ul>" if samples else "")
        + "</div>"
    )


def _stage_html(p: StageProfile) -> str:
    cards = [
        ("records", p.num_records),
        ("complete", _pct(p.percent_complete)),
        ("row groups", f"{p.row_groups_done}/{p.row_groups_total}"),
        ("dropped rows", p.dropped_rows),
    ]
    for k in ("llm_requests", "llm_tokens_in", "llm_tokens_out", "llm_cache_hits"):
        if k in p.llm_usage:
            cards.append((k.removeprefix("llm_").replace("_", " "), p.llm_usage[k]))
    for k in ("llm_latency_p50_ms", "llm_latency_p95_ms"):
        if p.llm_usage.get(k) is not None:
            cards.append(
                (k.removeprefix("llm_").replace("_ms", " ms").replace("_", " "), p.llm_usage[k])
            )
    cards_html = "".join(
        f"<div class='card'><span class='muted'>{html.escape(k)}</span><b>{html.escape(str(v))}</b></div>"
        for k, v in cards
    )
    drift = (
        "".join(f"<div class='drift'>⚠ {html.escape(f.message)}</div>" for f in p.drift)
        if p.drift
        else "<p class='ok'>✓ no drift ("
        + html.escape(", ".join(p.drift_checked) or "no thresholds apply")
        + ")</p>"
    )
    parts = [
        f"<section class='stage' id='stage-{html.escape(p.stage)}'>",
        f"<h2>Stage {html.escape(p.stage)}</h2>",
        f"<p class='muted'>fingerprint {p.fingerprint} · profiled from the"
        f" {'final output' if p.source == 'final' else 'row groups'}</p>",
        f"<div class='cards'>{cards_html}</div>",
        "<h3>Drift</h3>",
        drift,
    ]
    if p.finalize:
        parts += ["<h3>Finalize</h3>", _table_html(overview_rows(p)[-1:])]
    if p.drop_reasons:
        parts += [
            "<h3>Dropped rows by reason</h3>",
            _table_html([{"reason": r, "rows": n} for r, n in p.drop_reasons.items()]),
        ]
    if p.judge_scores:
        parts += ["<h3>Judge scores</h3>", _table_html(judge_rows(p))]
    parts += [
        "<h3>Columns</h3>",
        _table_html(column_rows(p)),
        "<div class='cols'>",
        *(_column_html(c) for c in p.column_statistics),
        "</div></section>",
    ]
    return "\n".join(parts)


def report_html(profiles: list[StageProfile]) -> str:
    """One self-contained page: inline CSS and SVG, no script or font fetched from anywhere."""
    wf = profiles[0].workflow if profiles else ""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    # "</" would end the script element early; "<\/" is the same JSON string
    data = json.dumps([p.to_dict() for p in profiles], default=str).replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>dd-assets report: {html.escape(wf)}</title><style>{CSS}</style></head><body>"
        f"<h1>Workflow {html.escape(wf)}</h1><p class='muted'>dd-assets profile report, {now};"
        f" stages: {html.escape(', '.join(p.stage for p in profiles))}</p>"
        + "\n".join(_stage_html(p) for p in profiles)
        # the figures themselves, for whoever wants to read them back
        + f"<script type='application/json' id='profile-data'>{data}</script>"
        + "</body></html>"
    )
