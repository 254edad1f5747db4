"""Reports: `report.json`, `report.html` with PNG plots, and the terminal summary table."""

from __future__ import annotations

import html
import itertools
import json
import os



def _pooling_text(c) -> str:
    """How the head pools its activation, in words (report.json)."""
    base = {"btc": "masked mean + first token", "tbc": "mean + max + last step over time",
            "bf": "features as they are"}.get(c.layout, "global avg + max")
    p = c.pooling
    if p is not None and p.filters is not None:
        rf = p.filters
        h, w = rf.response_side(c.spatial)
        return f"{base} + {rf.count} random {rf.size}x{rf.size} filters on {rf.pre[0]}x{rf.pre[1]}-pooled input, {h}x{w} cells"
    if p is not None and p.grid is not None:
        return f"{base} + {c.spatial[0] // p.grid[0]}x{c.spatial[1] // p.grid[1]} grid of averages"
    return base


def _candidate_rows(candidates, heads, profile) -> list[dict]:
    rows = []
    total = sum(c.at(profile.batch_size) for c in profile.slices) if profile else 0.0
    acc = 0.0
    for k, c in enumerate(candidates):
        row = {"index": k, "tensor": c.tensor, "layout": c.layout, "side": list(c.side),
               "flops_fraction": round(c.flops_fraction, 4), "pooling": _pooling_text(c)}
        if profile:
            acc += profile.slices[k].at(profile.batch_size)
            row["measured_cost_fraction"] = round(acc / total, 4) if total else None
            row["head_cost_fraction"] = round(profile.heads[k].at(profile.batch_size) / total, 4) if total else None
        if heads:
            row["head"] = heads[k].kind
            row["head_l2"] = heads[k].l2
            row["head_agreement_oof"] = round(heads[k].agreement, 4)
            row["head_neighbours"] = heads[k].augmented or None
        rows.append(row)
    return rows


def write_reports(out_dir, manifest, plan, candidates, heads, profile, check, opts, data_notes=()) -> None:
    """report.json, report.html and plots/ for a staged artifact; `check` is its exitc.verify
    Verification; `data_notes`: warnings on the calibration rows (analysis.one_class_note)."""
    rep = {
        "manifest": {k: manifest[k] for k in ("calibration", "profile", "prediction_output", "num_classes")},
        "options": {"target_acc": opts.target_acc, "confidence": opts.confidence, "batch_size": opts.batch_size,
                    "certify_fraction": opts.certify_fraction, "max_fit_rows": opts.max_fit_rows, "seed": opts.seed},
        "candidates": _candidate_rows(candidates, heads, profile),
        "plan": {"exits": plan.exits, "thresholds": plan.thresholds, "mu": plan.mu,
                 "exit_fractions_certify": plan.exit_fractions, "agreement_fit": plan.agreement_fit,
                 "agreement_certify": plan.agreement_certify, "agreement_bound": plan.agreement_bound,
                 "predicted_speedup_batch": plan.predicted_speedup,
                 "predicted_latency_speedup_b1": (plan.original_cost_b1 / plan.predicted_cost_b1
                                                  if plan.predicted_cost_b1 else 1.0),
                 "predicted_median_speedup_b1": (plan.original_cost_b1 / plan.predicted_median_b1
                                                 if plan.predicted_median_b1 else 1.0),
                 "predicted_full_depth_overhead": plan.full_depth_overhead,
                 "batch1": plan.batch1,
                 "calibration_outlook": plan.outlook,
                 "reason": plan.reason,
                 "notes": list(data_notes) + [n for n in [median_cliff_note(
                     plan, check.batch1_form if check is not None else plan.batch1)] if n]},
        "validation": check.to_json(),
        "speed": [dict(zip(("metric", "predicted", "measured"), r)) for r in speed_rows(plan, profile, check)],
        "profile": profile.to_json() if profile else None,
        "curve": plan.curve,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    plots = _plots(out_dir, plan, profile)
    _html(out_dir, rep, plots)


def _plots(out_dir, plan, profile) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if plan.curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        cost = [c["relative_cost"] for c in plan.curve]
        agr = [c["agreement_certify"] for c in plan.curve]
        ok = [c["accepted"] for c in plan.curve]
        ax.plot(cost, agr, "-", color="0.6", lw=1, label="exit policies (mu sweep)")
        ax.scatter([c for c, a in zip(cost, ok) if a], [g for g, a in zip(agr, ok) if a], s=10, color="tab:green",
                   label="certified")
        ax.axhline(plan.target, color="tab:red", ls="--", lw=1, label=f"target {plan.target}")
        if plan.exits:
            ax.scatter([plan.predicted_cost_batch / plan.original_cost_batch], [plan.agreement_certify], s=80,
                       marker="*", color="tab:blue", zorder=5, label="chosen")
        ax.set_xlabel("predicted cost relative to original (batch %d)" % (profile.batch_size if profile else 1))
        ax.set_ylabel("agreement with original (certification split)")
        ax.set_ylim(max(0.0, min(agr + [plan.target]) - 0.01), 1.001)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Agreement vs cost")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "plots", "pareto.png"), dpi=110)
        plt.close(fig)
        files.append("plots/pareto.png")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"exit {i}" for i in range(len(plan.exits))] + ["end"]
    ax.bar(labels, plan.exit_fractions, color=["tab:blue"] * len(plan.exits) + ["0.5"])
    ax.set_ylabel("fraction of rows")
    ax.set_title("Where rows exit (certification split)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "plots", "exits.png"), dpi=110)
    plt.close(fig)
    files.append("plots/exits.png")
    if profile:
        from .policy import CostModel

        segs = CostModel(profile).segments(plan.exits)
        b = profile.batch_size
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = [f"seg {i}" for i in range(len(segs))] + ["original"]
        vals = [s.at(b) * 1e3 for s in segs] + [profile.original.at(b) * 1e3]
        ax.bar(names, vals, color=["tab:orange"] * len(segs) + ["0.5"])
        ax.set_ylabel(f"ms per call at batch {b}")
        ax.set_title("Measured segment costs (full batch)")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "plots", "segments.png"), dpi=110)
        plt.close(fig)
        files.append("plots/segments.png")
    return files


def _outlook_html(outlook: list[dict], batch: int) -> str:
    if not outlook:
        return ""
    rows = "".join(f"<tr><td>{o['calibration_rows']}</td><td>{o['certification_rows']}</td>"
                   f"<td>{o['required_agreement']:.2%}</td><td>{o['fit_speedup_batch']:.2f}x</td></tr>"
                   for o in outlook)
    return (f"<h2>More calibration rows</h2><p>Speedup at batch {batch} estimated on the fit split with these heads "
            "and exits (heads fitted on more rows would do better still; the certified prediction above is the "
            "reference for this calibration set).</p><table><tr><th>calibration rows</th><th>certification rows</th>"
            f"<th>agreement they must show</th><th>fit-split speedup</th></tr>{rows}</table>")


def _html(out_dir, rep, plots) -> None:
    plan, cal = rep["plan"], rep["manifest"]["calibration"]
    e = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(c.get(k, '')))}</td>" for k in
                         ("index", "tensor", "layout", "flops_fraction", "measured_cost_fraction", "head",
                          "head_agreement_oof")) + "</tr>" for c in rep["candidates"])
    kept = ", ".join(str(x) for x in plan["exits"]) or "none"
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>exitc report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>exitc compile report</h1>
<p>Target agreement {cal['target_acc']} at confidence {cal['confidence']}: certified lower bound
<b>{cal['agreement_bound']:.4f}</b> (agreement {cal['agreement_certify']:.4f} on {cal['n_certify']} certification rows).
Kept exits (candidate indices): {e(kept)}. Predicted speedup at batch {rep['options']['batch_size']}:
<b>{plan['predicted_speedup_batch']:.2f}x</b>; at batch 1: {plan['predicted_latency_speedup_b1']:.2f}x.
{e(plan['reason'])}</p>
<p>Method: {e(cal['method'])}.</p>
<h2>Speed against the original</h2><table><tr><th>metric</th><th>predicted</th><th>measured (held-out rows)</th></tr>
{''.join('<tr>' + ''.join(f'<td>{e(str(v))}</td>' for v in r.values()) + '</tr>' for r in rep['speed'])}</table>
{''.join(f'<p>{e(n)}</p>' for n in plan.get('notes', []))}
{_outlook_html(plan.get('calibration_outlook') or [], rep['options']['batch_size'])}
{''.join(f'<img src="{p}" alt="{p}"><br>' for p in plots)}
<h2>Candidates</h2><table><tr><th>#</th><th>tensor</th><th>layout</th><th>FLOPs share</th><th>measured cost share</th>
<th>head</th><th>head agreement (held-out)</th></tr>{rows}</table>
<h2>Validation run</h2><pre>{e(json.dumps(rep['validation'], indent=2))}</pre></body></html>"""
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(body)


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(out)


def speed_rows(plan, profile, check) -> list[list[str]]:
    """Predicted (policy, from measured costs) and measured (held-out rows, interleaved) speed of
    the compiled model relative to the original: throughput at batch N, median and mean latency
    at batch 1, and what a row that runs to the end pays extra."""
    def ratio(x):
        return f"{x:.2f}x" if x else "-"

    def pct(x):
        return f"{x * 100:+.1f}%" if x is not None else "-"

    b = profile.batch_size if profile else (check.batch_size if check else "-")
    pred_b1 = plan.original_cost_b1 / plan.predicted_cost_b1 if plan.predicted_cost_b1 else None
    pred_med = plan.original_cost_b1 / plan.predicted_median_b1 if plan.predicted_median_b1 else None
    over = plan.full_depth_overhead or {}
    m = check if check is not None and check.measurements else None
    return [
        [f"throughput, batch {b}", ratio(plan.predicted_speedup),
         ratio(m.throughput_ratio) if m else "-"],
        ["median latency, batch 1", ratio(pred_med or 1.0), ratio(m.p50_ratio_b1) if m else "-"],
        ["mean latency, batch 1", ratio(pred_b1 or 1.0), ratio(m.mean_ratio_b1) if m else "-"],
        ["full-depth row's extra cost, batch 1", pct(over.get("batch1")), pct(m.full_depth_overhead_b1) if m else "-"],
        [f"full-depth row's extra cost, batch {b}", pct(over.get(f"batch{b}")),
         pct(m.full_depth_overhead_batch) if m else "-"],
    ]


# Within this many points of one half, the share of rows that leave early decides which side
# of the batch-1 median request is on, and traffic a little harder or easier than the calibration
# rows moves it (cv_native: 50.8% of the certification rows left at exit 0; the test split's
# p50 was 9.41x at 52% and 0.98x at 47% in another compile).
MEDIAN_CLIFF = 0.05


def median_cliff_note(plan, form: str) -> str | None:
    """A warning where the batch-1 median request sits on the cliff between an early exit and the
    full-depth path (the median is an early request only while more than half the requests leave
    by one exit), or None."""
    if not plan.exits or form == "original":
        return None
    left = list(itertools.accumulate(plan.exit_fractions[:-1]))
    k = 0 if form == "first_exit" else next((i for i, v in enumerate(left) if v >= 0.5), len(left) - 1)
    share = float(left[k])
    if abs(share - 0.5) >= MEDIAN_CLIFF:
        return None
    side = ("an early one" if share >= 0.5 else "one that runs to the end")
    return (f"note: {share:.1%} of the held-out rows left by exit {k}, so the median batch-1 request is {side}; "
            f"on traffic slightly {'harder' if share >= 0.5 else 'easier'} than the calibration rows it is "
            f"{'one that runs to the end (p50 about 1x)' if share >= 0.5 else 'an early one'}: read the mean "
            f"batch-1 latency, not the p50")


def outlook_line(plan) -> str | None:
    """One line on what more calibration rows would buy (policy.rows_outlook), or None. With
    exits, each larger set's fit-split estimate relative to the estimate for the set as it is
    (the certified prediction above stays the reference); where certification kept no exit, the
    fit split's estimates themselves."""
    if len(plan.outlook) < 2:
        return None
    now = plan.outlook[0]
    if not plan.exits and all(o["fit_speedup_batch"] == now["fit_speedup_batch"] for o in plan.outlook):
        return None  # certification, not the bar, kept the exits out: more rows change no estimate

    def gain(o):
        if plan.exits:
            return f"{o['fit_speedup_batch'] / now['fit_speedup_batch'] - 1.0:+.1%}"
        return f"{o['fit_speedup_batch']:.2f}x"

    parts = [f"{o['calibration_rows']} rows ({o['certification_rows']} certify at >= {o['required_agreement']:.2%}) "
             f"{gain(o)}" for o in plan.outlook[1:]]
    basis = "these heads and exits" if plan.exits else "these heads (and the exits it picks at each bar)"
    now_text = "" if plan.exits else f" {now['fit_speedup_batch']:.2f}x now"
    return (f"more calibration rows: {now['calibration_rows']} rows certify at >= {now['required_agreement']:.2%} "
            f"agreement on {now['certification_rows']}; batch throughput estimated on the fit split with {basis} "
            f"(better heads from more rows not counted){now_text}: " + ", ".join(parts))


def print_summary(result, log=print) -> None:
    plan = result.plan
    check = result.verification
    rows = []
    for i, c in enumerate(plan.exits):
        h = result.heads[c]
        rows.append([i, h.candidate.tensor[-40:], h.kind, f"{h.candidate.flops_fraction:.2f}",
                     f"{plan.thresholds[i]:.4f}", f"{plan.exit_fractions[i]:.3f}"])
    rows.append(["end", "(original output)", "-", "1.00", "-", f"{plan.exit_fractions[-1]:.3f}"])
    log(format_table(["exit", "tensor", "head", "FLOPs share", "threshold", "fraction"], rows))
    if plan.reason:
        log(f"exitc: {plan.reason}; the artifact runs the original model as one segment")
    log(f"agreement bound {plan.agreement_bound:.4f} (target {plan.target}, confidence {plan.confidence}, "
        f"{plan.n_certify} certification rows)")
    if plan.exits:
        log(format_table(["speed vs original", "predicted", "measured (held-out rows)"],
                         speed_rows(plan, result.profile, check)))
        form = check.batch1_form if check is not None else plan.batch1
        log({"original": "batch-1 requests run the original model (with exits, fewer than half the rows would "
                         "leave early and the median request would be slower); batches use the exits",
             "conditional": "batch-1 requests run conditional.onnx (one graph with If nodes)",
             "first_exit": ("batch-1 requests run exit 0, then the original model if it does not take them (a "
                            "request that runs to the end pays "
                            f"{(plan.full_depth_overhead or {}).get('batch1_first_exit', 0.0) * 100:+.1f}% predicted "
                            "for that exit); batches use every exit"),
             "segmented": "batch-1 requests run the segments"}.get(form, form))
        note = median_cliff_note(plan, form)
        if note:
            log(note)
    outlook = outlook_line(plan)
    if outlook:
        log(outlook)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    log(f"compiled in {result.seconds:.1f}s ({stages}) -> {result.out_dir}")
