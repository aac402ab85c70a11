"""`autoresearch status` as text for a terminal: the read model's `status` (observe.py), rendered. `--json` prints
the same dict as JSON."""

from __future__ import annotations

from . import transfer
from .costs import dollars


def render(status: dict) -> str:
    """The status as plain text for a terminal."""
    name = status["metric"]["name"]
    lines = [f"tag {status['tag']} (branch {status['branch']}), {name} ({status['metric']['goal']})"]
    baseline, best = status["baseline"], status["best"]
    if baseline is None:
        lines.append("no baseline yet: `autoresearch run` starts with it")
        return "\n".join(lines)
    lines.append(f"baseline  {name} {baseline['metric']:.6f}  at {baseline['commit'][:9]}")
    gain = status["improvement"]
    lines.append(f"best      {name} {best['metric']:.6f}  at {best['commit'][:9]}"
                 + (f"  ({gain:+.6f} better than baseline)" if gain else ""))
    if status["noise"]:
        noise = status["noise"][-1]
        pooled = (f"; pooled sd {noise['pooled_sd']:.4g} ({noise['pooled_df']} df)"
                  if noise["pooled_sd"] is not None else "")
        spread = f"sd {noise['sd']:.4g} over {noise['runs']} runs" if noise["sd"] is not None else f"{noise['runs']} run"
        lines.append(f"noise     {spread} of #{noise['index']} ({noise['budget']}){pooled}")
    counts = status["counts"]
    lines.append("experiments: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n) if any(
        counts.values()) else "experiments: none yet")
    spend = status.get("agent_cost")
    if spend and spend["proposals"]:
        cost = dollars(spend["cost_usd"]) if spend["cost_usd"] is not None else (
            f"unknown ({spend['unpriced_proposals']} proposals by a model with no price)")
        per = f", {dollars(spend['cost_per_proposal_usd'])} per proposal" if spend["cost_per_proposal_usd"] else ""
        lines.append(f"agent cost: {cost}{per} over {spend['proposals']} proposals ({spend['model']}); tokens: "
                     f"{spend['input_tokens']:,} in, {spend['cache_read_tokens']:,} cache read, "
                     f"{spend['cache_write_tokens']:,} cache write, {spend['output_tokens']:,} out"
                     + (f"; {spend['checks']} checks of its code ({spend['check_seconds']:.0f}s)" if spend.get("checks")
                        else ""))
    if status.get("constraints"):
        lines.append("constraints: " + "; ".join(c["text"] for c in status["constraints"]))
    slots = status.get("slots") or []
    if len(slots) > 1 or any(s["running"] is not None for s in slots):
        lines.append("slots:")
        for s in slots:
            share = f", {s['utilisation']:.0%} of the time busy" if s["utilisation"] is not None else ""
            now = f"; now #{s['running']}" if s["running"] is not None else "; idle"
            lines.append(f"  {s['slot']:<6} {s['runs']} runs, {s['busy_seconds']:.0f}s in runs{share}{now}")
    lines.append("")
    lines.append("kept chain:")
    by_id = {e["id"]: e for e in status["experiments"]}
    for index in status["kept_chain"]:
        e = by_id[index]
        lines.append(f"  #{index:<4} {e['metric']:.6f}  {(e['commit'] or '')[:9]}  {e['description']}")
    audit = [(f["index"], f"{f['kind']}" + (f" seed {f['seed']}" if f["seed"] is not None else ""), f["message"])
             for f in status["flags"]]
    flagged = {index for index, _, _ in audit}
    audit += [(r["id"], "rejected", r["reason"]) for r in status["rejections"] if r["id"] not in flagged]
    if audit:
        lines.append("")
        lines.append(f"rejections and flags ({len(audit)}):")
        for index, kind, message in sorted(audit, key=lambda item: item[0])[-20:]:
            lines.append(f"  #{index:<4} {kind:<11} {message}")
    recent = [e for e in status["experiments"] if e["state"] not in ("baseline",)][-10:]
    if recent:
        lines.append("")
        lines.append("latest experiments:")
        for e in recent:
            metric = f"{e['metric']:.6f}" if e["metric"] is not None else "-".ljust(8)
            why = f"  [{e['reason']}]" if e["state"] not in ("kept", "discarded") else ""
            effect = ""
            if e["effect"] is not None:
                effect = f"{e['effect']:+.4f}" + (f" ± {e['effect_se']:.4f}" if e["effect_se"] else "")
            lines.append(f"  #{e['id']:<4} {e['state']:<11} {metric}  {effect:<18} {len(e['runs'])} run"
                         f"{'s' if len(e['runs']) != 1 else ' '}  {e['description']}{why}")
    if status.get("suggestions"):
        lines.append("")
        lines.append("suggestions from the human:")
        for item in status["suggestions"][-10:]:
            if item["experiment"] is None:
                outcome = "waiting for the next proposal"
            else:
                metric = f" {item['metric']:.6f}" if item["metric"] is not None else ""
                effect = f" ({item['effect']:+.4f})" if item["effect"] is not None else ""
                outcome = f"taken up by #{item['experiment']}: {item['state']}{metric}{effect}"
            lines.append(f"  {item['text'][:70]!r}: {outcome}")
    finished = [v for v in status["verifications"] if v["summary"]]
    if finished:
        lines.append("")
        lines.append("verifications (baseline vs candidate, paired seeds):")
        for v in finished[-5:]:
            effect, settings = v["summary"]["effect"], v["settings"]
            scale = f", scaled {', '.join(settings['scale'])}" if settings.get("scale") else ""
            figure = f"{effect['effect']:+.4f}" if effect["effect"] is not None else "-"
            interval = f" [{effect['ci'][0]:+.4f}, {effect['ci'][1]:+.4f}]" if effect.get("ci") else ""
            lines.append(f"  {v['kind']:<11} {settings['split']} split, {settings['budget']}{scale}: gain {figure}"
                         f"{interval}: {effect['verdict']}")
    if status.get("transfers"):  # the latest: does each kept change still help at the larger scale?
        lines.append("")
        lines.append(transfer.render(status["transfers"][-1], name))
        if len(status["transfers"]) > 1:
            lines.append(f"  ({len(status['transfers']) - 1} earlier transfers: `autoresearch report` shows every one)")
    return "\n".join(lines)
