#!/usr/bin/env python3
"""Bounded load test of exitc on Triton Inference Server, loopback only.

One tritonserver (scripts/setup_triton.sh) on 127.0.0.1 serves three models through the exitc
C++ backend, with the same instance count, ORT threads, max_batch_size and dynamic batching:

  original    the single-segment artifact (compile with --target-acc 1.0: no exits), plain mode
  plain       the early-exit artifact, plain mode (one pass per execute call)
  continuous  the early-exit artifact, continuous depth-wise batching
  monitored   (with --monitor-sample-rate R > 0) plain mode with the agreement monitor running that
              share of the early rows again at full depth (exitc::AgreementMonitor): its serving cost

Closed loop: --threads client threads each send requests of --rows rows back to back; open loop
(--rate R): request k is due at k/R seconds and sent then by a free thread (latency from its due
time). A fixed number of requests per model (--requests), split into --rounds rounds that alternate the models
(so drift of the shared machine hits all three alike); every thread also stops at --max-seconds.
Reports throughput (rows/s), p50/p99 request latency, and the batch sizes the server actually
ran: rows per execute call (Triton's nv_inference_count / nv_inference_exec_count) and, for
continuous mode, rows per segment run (exitc_segment_rows_total / exitc_segment_runs_total).

    python bench/triton_load.py --artifact cv.exitc --original single.exitc --data test.npz [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from triton_server import TritonServer, metric_value, triton_paths  # noqa: E402


def metric_sum(text: str, name: str, **labels) -> float:
    return metric_value(text, name, **labels) or 0.0


def run_load(server, model, input_name, x, rows, threads, requests, deadline, grpc, rate=0.0):
    """Closed loop (rate 0: each thread sends back to back) or open loop (request k is due at
    start + k / rate; a free thread sends it then, and its latency counts from when it was due,
    so a slow server cannot lower the offered load)."""
    lat, errors = [], []
    lock = threading.Lock()
    counter = [0]
    start = time.perf_counter() + 0.05

    def worker(t):
        c = grpc.InferenceServerClient(server.grpc_url)
        rng = np.random.default_rng(t)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if counter[0] >= requests:
                        return
                    k = counter[0]
                    counter[0] += 1
                due = None
                if rate > 0:
                    due = start + k / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                s = int(rng.integers(0, len(x) - rows + 1))
                inp = grpc.InferInput(input_name, [rows, *x.shape[1:]], "FP32")
                inp.set_data_from_numpy(np.ascontiguousarray(x[s:s + rows]))
                t0 = time.perf_counter()
                try:
                    c.infer(model, [inp], outputs=[grpc.InferRequestedOutput("exitc_exit_index")])
                except Exception as exc:  # counted, reported
                    with lock:
                        errors.append(str(exc))
                    continue
                dt = time.perf_counter() - (t0 if due is None else min(t0, due))
                with lock:
                    lat.append(dt)
        finally:
            c.close()

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    t0 = start if rate > 0 else time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t0, lat, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", required=True, help="early-exit artifact")
    ap.add_argument("--original", required=True, help="single-segment artifact (exitc compile --target-acc 1.0)")
    ap.add_argument("--data", required=True, help=".npz with the input rows (first array or the input's name)")
    ap.add_argument("--requests", type=int, default=1200, help="requests per model (all rounds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16, help="concurrent client threads")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="open loop: requests per second offered to each model (0: closed loop)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--max-wait-us", type=int, default=4000, help="continuous mode latency bound")
    ap.add_argument("--policy", default="fullest", choices=["fullest", "deepest"])
    ap.add_argument("--monitor-sample-rate", type=float, default=0.0,
                    help="also serve 'monitored': plain mode with the agreement monitor at this sample rate")
    ap.add_argument("--max-seconds", type=float, default=120, help="per model and round, hard stop")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if triton_paths() is None:
        print("triton_load: Triton is not set up: run scripts/setup_triton.sh", file=sys.stderr)
        return 2
    import tritonclient.grpc as grpc

    from exitc.errors import ExitcError
    from exitc.triton import backend_dir, export_triton

    try:
        bdir = backend_dir()
    except ExitcError as exc:
        print(f"triton_load: {exc}", file=sys.stderr)
        return 2
    with open(os.path.join(a.artifact, "manifest.json")) as f:
        manifest = json.load(f)
    input_name = manifest["inputs"][0]["name"]
    data = np.load(a.data)
    x = (data[input_name] if input_name in data.files else data[data.files[0]]).astype(np.float32)

    common = {"intra_op_threads": str(a.intra_op_threads)}
    models = {
        "original": (a.original, "plain", common),
        "plain": (a.artifact, "plain", common),
        "continuous": (a.artifact, "continuous", {**common, "continuous_max_wait_us": str(a.max_wait_us),
                                                  "continuous_policy": a.policy}),
    }
    if a.monitor_sample_rate > 0:
        models["monitored"] = (a.artifact, "plain", common)
    tmp = tempfile.mkdtemp(prefix="exitc_triton_load_")
    repo = os.path.join(tmp, "models")
    for name, (art, mode, params) in models.items():
        export_triton(art, repo, name=name, max_batch_size=a.max_batch_size, instances=a.instances, mode=mode,
                      max_queue_delay_us=a.max_queue_delay_us, extra_parameters=params,
                      monitor_sample_rate=a.monitor_sample_rate if name == "monitored" else 0.0)
    results = {k: {"latencies": [], "seconds": 0.0, "errors": []} for k in models}
    with TritonServer(repo, backend_dir=bdir, log_path=os.path.join(tmp, "tritonserver.log")) as server:
        # Warm-up: a few requests per model (not measured).
        for name in models:
            run_load(server, name, input_name, x, a.rows, 2, 20, time.monotonic() + 30, grpc)
        before = server.metrics()
        per_round = max(1, a.requests // a.rounds)
        for r in range(a.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for name in order:
                secs, lat, errs = run_load(server, name, input_name, x, a.rows, a.threads, per_round,
                                           time.monotonic() + a.max_seconds, grpc, rate=a.rate)
                results[name]["seconds"] += secs
                results[name]["latencies"] += lat
                results[name]["errors"] += errs
        after = server.metrics()

    report = {"config": {k: v for k, v in vars(a).items() if k != "json"}, "models": {}}
    n_seg = len(manifest["segments"])
    for name, res in results.items():
        lat = np.array(res["latencies"]) * 1e3
        delta = {m: metric_sum(after, m, model=name) - metric_sum(before, m, model=name)
                 for m in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success")}
        entry = {
            "requests": int(len(lat)), "errors": len(res["errors"]), "seconds": res["seconds"],
            "throughput_rows_s": len(lat) * a.rows / res["seconds"] if res["seconds"] else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "rows_per_execute": delta["nv_inference_count"] / delta["nv_inference_exec_count"]
            if delta["nv_inference_exec_count"] else None,
            "rows_per_exit": [metric_sum(after, "exitc_rows_total", model=name, exit=str(e))
                              - metric_sum(before, "exitc_rows_total", model=name, exit=str(e)) for e in range(n_seg)],
        }
        if name == "continuous":
            seg = []
            for s in range(n_seg):
                runs = (metric_sum(after, "exitc_segment_runs_total", model=name, segment=str(s))
                        - metric_sum(before, "exitc_segment_runs_total", model=name, segment=str(s)))
                rows = (metric_sum(after, "exitc_segment_rows_total", model=name, segment=str(s))
                        - metric_sum(before, "exitc_segment_rows_total", model=name, segment=str(s)))
                seg.append({"runs": int(runs), "rows": int(rows), "mean_batch": rows / runs if runs else None})
            entry["segments"] = seg
        if name == "monitored":
            # cumulative gauges: what this run's requests added (the warm-up's rows are before)
            entry["monitor_rows"] = {k: metric_sum(after, "exitc_monitor_rows", model=name, rows=k)
                                     - metric_sum(before, "exitc_monitor_rows", model=name, rows=k)
                                     for k in ("sampled", "disagreements")}
        if res["errors"]:
            entry["first_error"] = res["errors"][0]
        report["models"][name] = entry

    base = report["models"]["original"]["throughput_rows_s"] or float("nan")
    load = f"open loop at {a.rate:g} requests/s" if a.rate > 0 else "closed loop"
    print(f"triton_load: {load}, {a.threads} client threads x {a.rows} row(s)/request, {a.requests} requests per model in "
          f"{a.rounds} rounds; max_batch_size {a.max_batch_size}, queue delay {a.max_queue_delay_us} us, "
          f"{a.instances} instance(s), {a.intra_op_threads} ORT thread(s)")
    print(f"{'model':<11} {'rows/s':>8} {'x orig':>7} {'p50 ms':>8} {'p99 ms':>8} {'rows/exec':>9} {'errors':>6}")
    for name, e in report["models"].items():
        print(f"{name:<11} {e['throughput_rows_s']:8.1f} {e['throughput_rows_s'] / base:7.2f} "
              f"{e['p50_ms'] or float('nan'):8.2f} {e['p99_ms'] or float('nan'):8.2f} "
              f"{e['rows_per_execute'] or float('nan'):9.2f} {e['errors']:6d}")
    seg = report["models"]["continuous"].get("segments", [])
    if seg:
        print("continuous: mean rows per segment run: "
              + ", ".join(f"seg{s} {d['mean_batch']:.2f} ({d['runs']} runs)" if d["mean_batch"] else f"seg{s} -"
                          for s, d in enumerate(seg)))
    mon = report["models"].get("monitored")
    if mon:
        plain_tp = report["models"]["plain"]["throughput_rows_s"] or float("nan")
        print(f"monitored: {mon['throughput_rows_s'] / plain_tp:.3f}x plain's throughput; agreement monitor at sample "
              f"rate {a.monitor_sample_rate:g} checked {int(mon['monitor_rows']['sampled'])} early rows at full depth "
              f"({int(mon['monitor_rows']['disagreements'])} disagreed)")
    print("rows per exit (plain): " + ", ".join(f"{int(v)}" for v in report["models"]["plain"]["rows_per_exit"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(e["errors"] == 0 for e in report["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
