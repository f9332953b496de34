"""`t2i serve` under load: C clients send J txt2img jobs in all (bundled model, 64x64, 20 steps),
while one more client sends bad requests (steps over the limit) every 100 ms.

    OMP_NUM_THREADS=1 nice python benchmarks/api_load.py --clients 32 --jobs 1000

Reports: job latency p50/p99 (submit to answer, queueing included), jobs lost (no 200 answer
with its own image), answers >= 500, time to a 4xx under the load (p50/p99), and the server's
memory (RSS) after 10 jobs and after all of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' server launcher

from api_helpers import Server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    args = parser.parse_args()

    lock = threading.Lock()
    counter = iter(range(args.jobs))
    latencies, lost, server_errors, done = [], [], [], [0]
    bad_latencies, bad_statuses = [], []
    rss = {}
    stop_bad = threading.Event()

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), "--threads", str(args.threads), "--queue-size", str(max(64, args.clients * 2)))
        rss["start"] = rss_mb(server.proc.pid)
        idle = []  # the same bad request to the idle server: what the machine alone costs
        with server.client() as client:
            for _ in range(200):
                start = time.perf_counter()
                client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 500})
                idle.append(time.perf_counter() - start)

        def client_loop():
            with server.client(timeout=3600) as client:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    body = {"prompt": f"shape {i % 50}", "seed": i, "steps": args.steps, "width": args.size,
                            "height": args.size, "sampler_name": "Euler a", "save_images": False}
                    start = time.perf_counter()
                    try:
                        answer = client.post("/sdapi/v1/txt2img", json=body)
                    except Exception as err:  # counted as lost
                        lost.append((i, type(err).__name__))
                        continue
                    elapsed = time.perf_counter() - start
                    ok = answer.status_code == 200 and json.loads(answer.json()["info"])["all_seeds"] == [i] and \
                        len(answer.json()["images"]) == 1
                    with lock:
                        if answer.status_code >= 500:
                            server_errors.append(answer.status_code)
                        if not ok:
                            lost.append((i, answer.status_code))
                        latencies.append(elapsed)
                        done[0] += 1
                        if done[0] == 10:
                            rss["after 10 jobs"] = rss_mb(server.proc.pid)

        def bad_loop():
            with server.client() as client:
                while not stop_bad.is_set():
                    start = time.perf_counter()
                    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 500})
                    bad_latencies.append(time.perf_counter() - start)
                    bad_statuses.append(answer.status_code)
                    stop_bad.wait(0.1)

        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        bad = threading.Thread(target=bad_loop)
        for t in threads:
            t.start()
        bad.start()
        for t in threads:
            t.join()
        stop_bad.set()
        bad.join()
        wall = time.perf_counter() - started
        rss[f"after {args.jobs} jobs"] = rss_mb(server.proc.pid)
        server.stop()

    print(f"{args.clients} clients, {args.jobs} jobs ({args.size}x{args.size}, {args.steps} steps), "
          f"{args.threads} torch thread(s) in the server; {wall:.0f} s, {args.jobs / wall:.2f} jobs/s")
    print(f"job latency (queueing included): p50 {percentile(latencies, 50):.2f} s, p99 {percentile(latencies, 99):.2f} s")
    print(f"lost: {len(lost)}  answers >= 500: {len(server_errors)}  {lost[:5]}")
    print(f"bad requests: {len(bad_latencies)}, statuses {sorted(set(bad_statuses))}, time to 4xx p50 "
          f"{percentile(bad_latencies, 50) * 1000:.1f} ms, p99 {percentile(bad_latencies, 99) * 1000:.1f} ms, "
          f"max {max(bad_latencies) * 1000:.1f} ms")
    print(f"the same bad request to the idle server: p50 {percentile(idle, 50) * 1000:.1f} ms, "
          f"p99 {percentile(idle, 99) * 1000:.1f} ms")
    print("server RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    after10, after_all = rss.get("after 10 jobs"), rss[f"after {args.jobs} jobs"]
    if after10:
        print(f"memory after {args.jobs} jobs vs after 10: {after_all / after10 - 1:+.1%}")
    print(f"(mean job latency {statistics.mean(latencies):.2f} s over {len(latencies)} answers)")


if __name__ == "__main__":
    main()
