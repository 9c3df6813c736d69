#!/usr/bin/python3
"""Draw what `gati serve-sim` measured, as one PNG with three panels.

  gati serve-sim --model M --caches C --trace drift --json sim.json --per-request sim.jsonl
  tools/plot_serve.py --report sim.json --requests sim.jsonl --out sim.png

Panels: the hit rate of every exit (one bar group per cache file when the
report compares several side by side), the latency distribution with and
without caches (from --requests), and the agreement with the full model over
the trace in a rolling window (from --requests; on the drift trace this
shows where the traffic shifts).  Needs matplotlib only.
"""
import argparse
import json
import os
import sys


def load_requests(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e})")
    for key in ("latency_us", "full_latency_us", "label", "full_label"):
        if rows and key not in rows[0]:
            raise SystemExit(f"{path}: requests lack '{key}' (written by an older gati serve-sim?)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="serve-sim --json output")
    ap.add_argument("--requests", help="serve-sim --per-request output (latency and agreement panels)")
    ap.add_argument("--window", type=int, default=500, help="requests in the rolling agreement window")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()
    for path in (args.report, args.requests):
        if path and os.path.abspath(path) == os.path.abspath(args.out):
            raise SystemExit(f"--out {args.out} would overwrite an input")
    if args.window < 1:
        raise SystemExit("--window must be at least 1")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        report = json.load(open(args.report))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{args.report}: {e}")
    runs = report["runs"] if "runs" in report else [report]
    rows = load_requests(args.requests) if args.requests else []

    panels = 3 if rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    axes = axes[0]

    ax = axes[0]
    names = [e["name"] for e in runs[0]["exits"]]
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        rates = [e["hit_rate"] for e in run["exits"]]
        label = f"{run.get('caches', 'caches')} ({run.get('kinds', '?')}): " \
                f"{run['speedup_mean']:.2f}x, agreement {run['agreement']:.4f}"
        ax.bar([i + k * width for i in range(len(rates))], rates, width, label=label)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("share of requests answered here")
    ax.set_title(f"hit rate per exit, trace {runs[0]['trace']} (seed {runs[0]['seed']})")
    ax.legend(fontsize=7)

    if rows:
        ax = axes[1]
        with_c = [r["latency_us"] / 1e3 for r in rows]
        without = [r["full_latency_us"] / 1e3 for r in rows]
        # Log-spaced bins on a log axis: early exits and stalled requests differ by 100x or more.
        both = [v for v in with_c + without if v > 0]
        lo, hi = min(both), max(both) * 1.001
        bins = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        ax.hist(without, bins=bins, alpha=0.6, label=f"caches off (mean {sum(without) / len(without):.3f} ms)")
        ax.hist(with_c, bins=bins, alpha=0.6, label=f"caches on (mean {sum(with_c) / len(with_c):.3f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency per request (ms, log scale)")
        ax.set_ylabel("requests")
        ax.set_title("latency distribution")
        ax.legend(fontsize=8)

        ax = axes[2]
        agree = [1 if r["label"] == r["full_label"] else 0 for r in rows]
        hits = [1 if r["exit"] >= 0 else 0 for r in rows]
        w = min(args.window, len(rows))
        xs, ya, yh = [], [], []
        sa = sum(agree[:w])
        sh = sum(hits[:w])
        for i in range(w, len(rows) + 1):
            if i > w:
                sa += agree[i - 1] - agree[i - 1 - w]
                sh += hits[i - 1] - hits[i - 1 - w]
            xs.append(i)
            ya.append(sa / w)
            yh.append(sh / w)
        ax.plot(xs, ya, label="agreement with the full model")
        ax.plot(xs, yh, label="hit rate")
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("request")
        ax.set_title(f"over the trace (window {w})")
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
