"""`autoresearch report [--out DIR]`: progress.png and a self-contained report.html, from the ledger.

progress.png: every experiment a dot over its index (discarded ones faded; crashes, timeouts,
rejections and interruptions marked in a band on the worse side), the running best as a step
line, kept changes labelled with their descriptions, the baseline as a dashed line.

report.html opens offline: inline CSS and a few lines of inline JS (sortable tables), the PNG
embedded as base64, no external scripts, fonts or images. It holds the summary, the kept chain
with each change's effect (mean ± sd over seeds, and the effect's standard error where there are
several seeds), test-split figures, verifications, transfer tables, cost, noise model and flags where the
ledger has them, the full experiment table, and every diff (discarded ones too), collapsed.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Optional

from . import observe
from .ledger import Ledger
from .target import Target

FAILED = {"crashed": ("x", "#d62728", "crashed"), "timeout": ("v", "#ff7f0e", "timeout"),
          "rejected": ("|", "#9467bd", "rejected"), "interrupted": ("o", "#17becf", "interrupted")}
LABEL_CHARS = 48


def build(target: Target, ledger: Ledger, tag: str, out: Path) -> tuple[Path, Path]:
    """Write progress.png and report.html into `out`; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    experiments = ledger.experiments(tag)
    status = observe.status(ledger, tag, target, experiments)
    summary = observe.summary(status)
    rows = observe.rows(experiments, target.config, status, diffs=True)
    png = progress_png(rows, summary)
    png_path, html_path = out / "progress.png", out / "report.html"
    png_path.write_bytes(png)
    html_path.write_text(report_html(rows, summary, status, png))
    return png_path, html_path


# ---------------------------------------------------------------------------- the plot


def progress_png(rows: list[dict], summary: dict, size: tuple[float, float] = (12, 6), dpi: int = 100) -> bytes:
    """The progress plot as PNG bytes (matplotlib's Agg canvas; no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    minimize = summary["metric"]["goal"] == "minimize"
    name = summary["metric"]["name"]
    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    measured = [r for r in rows if r["metric"] is not None]
    values = [r["metric"] for r in measured]
    baseline = summary["baseline"]["metric"] if summary["baseline"] else None
    if values:
        # The axis spans the best results and the baseline; far-off losers are drawn at the edge, clipped.
        ordered = sorted(values, reverse=not minimize)
        worst_shown = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        edges = [min(values) if minimize else max(values), worst_shown] + ([baseline] if baseline is not None else [])
        low, high = min(edges), max(edges)
        pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad
        band = high + pad if minimize else low - pad  # where experiments with no metric are marked
        ax.set_ylim(*(sorted((low - (0 if minimize else 2 * pad), high + (2 * pad if minimize else 0)))))
    else:
        low, high, band = 0.0, 1.0, 1.0

    def clip(v):
        return min(max(v, low), high)

    discarded = [r for r in measured if r["state"] not in ("baseline", "kept")]
    ax.scatter([r["id"] for r in discarded], [clip(r["metric"]) for r in discarded], s=18, color="#7f7f7f",
               alpha=0.35, label="discarded", zorder=2)
    chain = [r for r in measured if r["state"] in ("baseline", "kept")]
    if baseline is not None:
        ax.axhline(baseline, color="#444444", linestyle="--", linewidth=1, label=f"baseline {baseline:.6g}", zorder=1)
    if chain:
        last = max(r["id"] for r in rows)
        xs = [r["id"] for r in chain] + [last]
        ys = [r["metric"] for r in chain] + [chain[-1]["metric"]]
        ax.step(xs, ys, where="post", color="#2ca02c", linewidth=2, label="running best", zorder=3)
        ax.scatter([chain[0]["id"]], [chain[0]["metric"]], s=46, color="#444444", zorder=4)
        kept = [r for r in chain if r["state"] == "kept"]
        ax.scatter([r["id"] for r in kept], [r["metric"] for r in kept], s=46, color="#2ca02c", edgecolor="black",
                   linewidth=0.6, label="kept", zorder=4)
        for r in kept:
            text = r["description"] if len(r["description"]) <= LABEL_CHARS else r["description"][:LABEL_CHARS - 1] + "…"
            text = text.replace("$", r"\$")  # not mathtext
            ax.annotate(text, (r["id"], r["metric"]), xytext=(4, 6 if minimize else -10), textcoords="offset points",
                        fontsize=7.5, rotation=18, color="#1a5e1a", zorder=5)
    for state, (marker, color, label) in FAILED.items():
        failed = [r for r in rows if r["state"] == state]
        if failed:
            style = {"facecolors": "none", "edgecolors": color} if marker == "o" else {"color": color}
            ax.scatter([r["id"] for r in failed], [band] * len(failed), marker=marker, s=36, label=f"{label} "
                       f"({len(failed)})", zorder=3, linewidths=1.5, **style)
    if any(r["metric"] is None for r in rows):
        ax.axhspan(band - 0.6 * (high - low) * 0.05, band + 0.6 * (high - low) * 0.05, color="#f2f2f2", zorder=0)
        ax.annotate("no metric", (0.005, band), ha="left", va="center", fontsize=7.5, color="#666666",
                    xycoords=("axes fraction", "data"))
    running = [r for r in rows if r["state"] in ("running", "proposed")]
    if running:
        ax.scatter([r["id"] for r in running], [band] * len(running), marker="*", s=50, color="#1f77b4",
                   label="running", zorder=3)
    counts = summary["counts"]
    title = f"{summary['target']} · {summary['tag']}: {len(rows)} experiments, {counts.get('kept', 0)} kept"
    if summary["best"] and summary["baseline"] and summary["improvement"] is not None:
        title += f" · {name} {summary['baseline']['metric']:.6g} → {summary['best']['metric']:.6g}"
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{name} ({'lower' if minimize else 'higher'} is better)")
    ax.grid(True, alpha=0.25)
    if rows:
        ax.set_xlim(-0.5, max(r["id"] for r in rows) + 0.5 + max(1, 0.02 * len(rows)))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- the page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Optional[float], digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _pm(mean: Optional[float], sd: Optional[float], n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.6g} ± {sd:.2g} <small>({n} seeds)</small>" if sd is not None else \
        f"{mean:.6g} <small>({n} seed{'s' if n != 1 else ''})</small>"


def _effect(row: dict) -> str:
    if row["effect"] is None:
        return "–"
    text = f"{row['effect']:+.4g}"
    if row["effect_se"]:
        text += f" ± {row['effect_se']:.2g} <small>({row['effect'] / row['effect_se']:.1f} se)</small>"
    return text


def _diff_html(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        kind = ("add" if line.startswith("+") and not line.startswith("+++") else
                "del" if line.startswith("-") and not line.startswith("---") else
                "hunk" if line.startswith("@@") else "meta" if line.startswith(("diff ", "index ", "+++", "---")) else "")
        out.append(f'<span class="{kind}">{_e(line)}</span>' if kind else _e(line))
    return "\n".join(out)


def _table(headers: list[str], body: list[list[tuple[str, object]]], css: str = "") -> str:
    """A sortable table: each cell is (html, sort value)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for cells in body:
        row_class = ""
        if cells and cells[0][0].startswith("class="):
            row_class, cells = f' {cells[0][0]}', cells[1:]
        tds = "".join(f'<td data-v="{_e("" if v is None else v)}">{h}</td>' for h, v in cells)
        lines.append(f"<tr{row_class}>{tds}</tr>")
    return f'<table class="sortable {css}"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'


def _interval(effect: Optional[dict]) -> str:
    if not effect or effect.get("effect") is None:
        return "–"
    ci = f" [{effect['ci'][0]:+.4g}, {effect['ci'][1]:+.4g}]" if effect.get("ci") else ""
    return f"{effect['effect']:+.4g}{ci} <small>({effect['pairs']} pairs)</small>"


def _transfer(t: dict, name: str) -> str:
    """One transfer (observe.transfers): what ran, each change's effect at both scales and its verdict, and each
    variant's mean."""
    budgets, scale, seeds = t["budgets"], ", ".join(t["scale"]), ", ".join(map(str, t["seeds"]))
    intro = (f"<h3>Transfer #{t['id']}{'' if t['finished'] else ' (unfinished)'}</h3><p>The baseline, the best and "
             f"the best without each kept change, on the {_e(t['split'])} split with the same seeds {seeds}, "
             f"at the research's scale ({_e(budgets['small'])}) and at {_e(scale)} ({_e(budgets['large'])}): "
             f"{t['runs']} of {t['planned']} runs. An effect is the {_e(name)} gain of the best over the best without "
             "that change (positive is better), with its 95% interval over the paired seeds. The verdict reads the "
             "larger scale: <b>transfers</b> (its interval lies above zero), <b>does not</b> (at or below zero), "
             "<b>unclear</b> (it straddles zero, or too few runs succeeded).</p>")
    body = []
    for r in t["rows"]:
        verdict = f'<b class="v-{_e(r["verdict"].replace(" ", "-"))}">{_e(r["verdict"])}</b>'
        if r["reason"]:
            verdict += f" <small>{_e(r['reason'])}</small>"
        body.append([(_e(r["label"]), r["index"]), (_e(r["description"]), r["description"]),
                     (_interval(r["small"]), (r["small"] or {}).get("effect")),
                     (_interval(r["large"]), (r["large"] or {}).get("effect")), (verdict, r["verdict"])])
    table = _table(["change", "description", f"small: {budgets['small']}", f"large: {scale} {budgets['large']}",
                    "verdict"], body, "transfer")
    means = t.get("means") or {}
    names = sorted({variant for by_name in means.values() for variant in by_name},
                   key=lambda v: (v != "baseline", v != "best", v))
    mean_rows = [[(_e(v), v)] + [(_pm(m["mean"], m["sd"], m["n"]) if (m := means.get(s, {}).get(v)) else "–", None)
                                 for s in ("small", "large")] for v in names]
    details = ("<details><summary>each variant's mean</summary>"
               + _table(["variant", f"{name} small", f"{name} large"], mean_rows) + "</details>") if names else ""
    return intro + table + details


def report_html(rows: list[dict], summary: dict, status: dict, png: bytes) -> str:
    """The page: `rows` and `summary` of the tag's `status` (observe.py), the plot as PNG bytes."""
    name = summary["metric"]["name"]
    by_id = {r["id"]: r for r in rows}
    baseline, best = summary["baseline"], summary["best"]
    cards = [("baseline", f"{_num(baseline['metric'])}" if baseline else "–"),
             ("best", f"{_num(best['metric'])} <small>#{best['id']}</small>" if best else "–")]
    if summary["improvement"] is not None:
        relative = summary["relative_improvement"]
        cards.append(("improvement", f"{summary['improvement']:+.4g}"
                      + (f" <small>({100 * relative:.1f}%)</small>" if relative is not None else "")))
    cards.append(("experiments", f"{summary['experiments']}"))
    cards += [(state, str(n)) for state, n in summary["counts"].items() if n or state in ("kept", "discarded")]
    cards.append(("time in runs", f"{summary['seconds'] / 60:.1f} min"))
    cost = summary.get("cost")
    if cost and "usd" in cost:
        cards.append(("agent cost", f"${cost['usd']:.2f}"))
    if summary["flags"]:
        cards.append(("flags", str(summary["flags"])))
    card_html = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{v}</div></div>'
                        for k, v in cards)

    tested = [r for r in rows if r["test"]]
    chain_headers = ["#", "change (hypothesis)", f"{name} (mean ± sd)", "effect over parent", "vs baseline"]
    chain_headers += (["test split"] if tested else []) + ["lines", "commit"]
    chain_body = []
    for index in summary["kept_chain"]:
        r = by_id[index]
        versus = None
        if baseline and baseline["metric"] is not None and r["metric"] is not None:
            versus = (baseline["metric"] - r["metric"]) if summary["metric"]["goal"] == "minimize" else \
                (r["metric"] - baseline["metric"])
        test = r.get("test")
        cells = [(f'<a href="#diff-{index}">#{index}</a>', index), (_e(r["description"]), r["description"]),
                 (_pm(r["metric"], r["sd"], r["seeds"]), r["metric"]), (_effect(r), r["effect"]),
                 (f"{versus:+.4g}" if versus is not None else "–", versus)]
        if tested:
            cells.append((_pm(test["mean"], test["sd"], test["n"]) if test else "–", test["mean"] if test else None))
        cells += [(f"+{r['lines_added']} −{r['lines_removed']}", r["lines_added"] + r["lines_removed"]),
                  (f"<code>{_e((r['commit'] or '')[:9])}</code>", r["commit"])]
        chain_body.append(cells)

    has_cost = any(r.get("cost") for r in rows)
    headers = ["#", "state", name, "seeds", "effect", "lines", "seconds", "agent", "description", "reason"]
    headers += ["cost"] if has_cost else []
    body = []
    for r in rows:
        flags = "".join(f' <span class="flag" title="{_e(f["message"])}">⚑ {_e(f["kind"])}</span>' for f in r["flags"])
        cells = [(f'class="s-{_e(r["state"])}"', None),
                 (f'<a href="#diff-{r["id"]}">#{r["id"]}</a>' if r["diff"] else f"#{r['id']}", r["id"]),
                 (f'<span class="state">{_e(r["state"])}</span>', r["state"]),
                 (f"{_num(r['metric'])}" + (f" ± {r['sd']:.2g}" if r["sd"] is not None else ""), r["metric"]),
                 (str(r["seeds"]), r["seeds"]), (_effect(r), r["effect"]),
                 (f"+{r['lines_added']} −{r['lines_removed']}", r["lines_added"] + r["lines_removed"]),
                 (f"{r['seconds']:.1f}" if r["seconds"] else "", r["seconds"]), (_e(r["agent"]), r["agent"]),
                 (_e(r["description"]) + flags, r["description"]), (_e(r["reason"]), r["reason"])]
        if has_cost:
            usd = (r.get("cost") or {}).get("usd")
            cells.append((f"${usd:.3f}" if usd is not None else "", usd))
        body.append(cells)

    sections = [f'<section><h2>Progress</h2><img alt="progress plot" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}"></section>',
                "<section><h2>Kept chain</h2><p>Each change on top of the previous one, from the baseline. "
                "Effects are improvements (positive is better); ± is the standard deviation over seeds for "
                "a metric and the standard error for an effect, where the change ran on several seeds.</p>"
                + _table(chain_headers, chain_body) + "</section>"]
    if tested:
        test_rows = [[(f"#{r['id']}", r["id"]), (_e(r["description"]), None), (_pm(r["metric"], r["sd"], r["seeds"]),
                      r["metric"]), (_pm(r["test"]["mean"], r["test"]["sd"], r["test"]["n"]), r["test"]["mean"])]
                     for r in tested]
        sections.append("<section><h2>Validation and test split</h2>"
                        + _table(["#", "description", "validation", "test"], test_rows) + "</section>")
    if status["verifications"]:
        def side(v, role):
            side = v["sides"][role]
            return (f"#{side['id']} " if side["id"] is not None else "") + _pm(side["mean"], side["sd"], side["n"])

        def effect(v):
            e = (v["summary"] or {}).get("effect") or {}
            if e.get("effect") is None:
                return _e(e.get("verdict", "–"))
            ci = f" [{e['ci'][0]:+.4g}, {e['ci'][1]:+.4g}]" if e.get("ci") else ""
            return f"{e['effect']:+.4g}{ci} <small>({e.get('pairs', 0)} pairs)</small>: <b>{_e(e.get('verdict', ''))}</b>"

        sections.append("<section><h2>Verifications</h2><p>Baseline and candidate re-run with the same seeds, "
                        "interleaved; the effect is the mean paired improvement with its 95% interval.</p>" + _table(
            ["#", "kind", "split", "budget", "scale", "baseline", "candidate", "effect"],
            [[(str(v["id"]), v["id"]), (_e(v["kind"]), v["kind"]), (_e(v["settings"].get("split", "")), None),
              (_e(v["settings"].get("budget", "")), None), (_e(", ".join(v["settings"].get("scale") or [])), None),
              (side(v, "baseline"), None), (side(v, "candidate"), None),
              (effect(v), ((v["summary"] or {}).get("effect") or {}).get("effect"))]
             for v in status["verifications"]]) + "</section>")
    if status["transfers"]:
        sections.append('<section id="transfer"><h2>Transfer: do the kept changes hold at a larger scale?</h2>'
                        + "".join(_transfer(t, name) for t in reversed(status["transfers"])) + "</section>")
    if summary["noise"]:
        sections.append("<section><h2>Noise model</h2>" + _table(
            ["key", "value"], [[(_e(k), k), (_e(_num(v) if isinstance(v, float) else v), None)]
                               for k, v in summary["noise"].items()]) + "</section>")
    if status["flags"]:
        sections.append("<section><h2>Flags</h2>" + _table(
            ["#", "kind", "message"], [[(f'<a href="#diff-{f["index"]}">#{f["index"]}</a>', f["index"]),
                                       (_e(f["kind"]), f["kind"]), (_e(f["message"]), f["message"])]
                                      for f in status["flags"]]) + "</section>")
    if cost:
        sections.append("<section><h2>Cost</h2>" + _table(
            ["", "total"], [[(_e(k), k), (f"{v:,.4g}", v)] for k, v in cost.items()]) + "</section>")
    sections.append("<section><h2>All experiments</h2><p>Click a column header to sort.</p>"
                    + _table(headers, body, "all") + "</section>")
    diffs = []
    for r in rows:
        if not r["diff"]:
            continue
        diffs.append(f'<details id="diff-{r["id"]}" class="s-{_e(r["state"])}"><summary>#{r["id"]} '
                     f'<span class="state">{_e(r["state"])}</span> {_e(r["description"])} '
                     f'<small>+{r["lines_added"]} −{r["lines_removed"]}</small></summary>'
                     f'<pre class="diff">{_diff_html(r["diff"])}</pre></details>')
    sections.append("<section><h2>Every diff</h2>" + ("".join(diffs) or "<p>none yet</p>") + "</section>")
    sessions = status["sessions"]
    if sessions:
        session_rows = [[(str(s["id"]), s["id"]), (_e(s["agent"]), s["agent"]), (_e(s["budget"]), s["budget"]),
                         (_e(time.strftime("%Y-%m-%d %H:%M", time.localtime(s["started_at"]))), s["started_at"]),
                         (_e(s["end_reason"] or "(running or killed)"), s["end_reason"])] for s in sessions]
        sections.append("<section><h2>Sessions</h2>"
                        + _table(["session", "agent", "budget", "started", "ended"], session_rows) + "</section>")

    generated = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>autoresearch report: {_e(summary['target'])} · {_e(summary['tag'])}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style></head>
<body><header><h1>autoresearch report: {_e(summary['target'])} · tag {_e(summary['tag'])}</h1>
<p>{_e(name)} ({_e(summary['metric']['goal'])}) · branch <code>{_e(summary['branch'])}</code> from
<code>{_e(summary['base_commit'][:9])}</code> · generated {generated}</p></header>
<div class="cards">{card_html}</div>
{''.join(sections)}
<script>{_JS}</script></body></html>
"""


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1280px;padding:0 20px 40px;color:#1d1d1f}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
header p{color:#555;margin:0}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:16px}.card{border:1px solid #ddd;border-radius:8px;padding:8px 14px;min-width:90px}
.card .k{color:#666;font-size:12px}.card .v{font-size:19px;font-weight:600}small{color:#777;font-weight:normal}
img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top;white-space:nowrap}
td:nth-last-child(-n+2){white-space:normal}
th{cursor:pointer;user-select:none;background:#f6f6f6;position:sticky;top:0}th.asc:after{content:" ▲"}th.desc:after{content:" ▼"}
tr.s-discarded td{color:#888}tr.s-kept td{background:#f1faf1}tr.s-baseline td{background:#f4f4ff}
.state{font-weight:600}.s-kept .state{color:#2a7d2a}.s-crashed .state,.s-timeout .state{color:#c0392b}
.s-rejected .state{color:#8e44ad}.s-interrupted .state{color:#1f8fa3}.s-discarded .state{color:#888}
.flag{color:#b35c00;font-size:12px}details{border:1px solid #e5e5e5;border-radius:6px;margin:6px 0;padding:4px 10px}
summary{cursor:pointer}pre.diff{overflow-x:auto;background:#fafafa;padding:8px;margin:6px 0}
.add{color:#1a7f37;background:#e6ffec;display:inline-block;width:100%}.del{color:#b42318;background:#ffebe9;display:inline-block;width:100%}
.hunk{color:#6639ba}.meta{color:#777}
.v-transfers{color:#2a7d2a}.v-does-not{color:#c0392b}.v-unclear,.v-not-measured{color:#777}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === '' && y !== '') return 1; if (y === '' && x !== '') return -1;
        var nx = Number(x), ny = Number(y);
        var c = (x !== '' && y !== '' && !isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""
