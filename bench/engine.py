"""Benchmark: Canvas's batched engine against transformers' `model.generate()` on the same model,
parameters and prompts. Prints one JSON line per scenario and a table; numbers, not assertions.

Scenarios: generate() one request at a time; generate() as one static batch; the engine at each
concurrency, with all requests arriving together and with arrivals spread over time (Poisson).
Every request denoises `--canvases` canvases at a fixed `--steps` steps (random weights never converge,
and the stop criterion is set so they cannot), so all scenarios do the same work.

Per engine scenario: ms per step (decoder pass), tokens/s, the throughput as a multiple of sequential
generate() (`x_generate`), model FLOP utilisation (FLOPs of one row's pass counted by torch's
FlopCounterMode, against `--peak-tflops`, known for H100/H200) and the step time over the weight-read
floor (the text weights' bytes over the device's copy bandwidth, measured in the same run). Each engine
row's K/V slot holds `--max-context` tokens (by default just what the scenario needs), so `peak_gib`
counts the KV a deployment sized for these requests would hold.
`--profile` adds host reads and kernel launches per step (torch profiler; on the CPU: top-level ATen ops).
`--graphs` runs the engine scenarios with its decoder passes in CUDA graphs (`on`, the engine's default:
captured on a GPU, none on the CPU), without (`off`), `both` (each scenario twice), or `uncaptured` (the
bucketed passes run eagerly: the CPU stand-in); each scenario reports its graphs, the engine's start-up
time (capture included) and how many passes were replayed.

  python bench/engine.py --arch small                      # CPU, the small config of shared/bench
  python bench/engine.py --arch 26b --concurrency 1,8,32 --requests 32 --baseline-requests 2 --profile
  python bench/engine.py --arch 26b --concurrency 1,8,32 --requests 32 --baseline-requests 2 --graphs both

Needs only torch and transformers (and this repository's worker/engine, which imports nothing else).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for worker.engine
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arch import CANVAS, build

from worker.engine import Engine, Request, SamplingParams
from worker.engine.graphs import capture_blocker
from worker.engine.rows import Phase

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0}  # dense bf16, the vendor's data sheet
ENGINE_OPTIONS: dict[str, Any] = {}  # keyword arguments of every Engine built here (set from the command line)
GRAPH_MODES = {"on": ["auto"], "off": ["off"], "both": ["auto", "off"], "uncaptured": ["uncaptured"]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def fixed_params(steps: int, canvases: int, canvas: int, seed: int) -> SamplingParams:
    # stability_threshold above the step count and a vanishing confidence threshold: every step runs.
    return SamplingParams(
        max_new_tokens=canvases * canvas,
        max_denoising_steps=steps,
        stability_threshold=steps + 1,
        confidence_threshold=1e-12,
        seed=seed,
    )


def generate_kwargs(p: SamplingParams) -> dict[str, Any]:
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    return dict(
        max_new_tokens=p.max_new_tokens,
        max_denoising_steps=p.max_denoising_steps,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=p.entropy_bound),
        t_min=p.t_min,
        t_max=p.t_max,
        stability_threshold=p.stability_threshold,
        confidence_threshold=p.confidence_threshold,
        return_dict_in_generate=True,
    )


def summary(
    name: str, latencies: list[float], wall: float, tokens: int, steps: int, device: str, **extra: Any
) -> dict[str, Any]:
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [latencies[0]] * 19
    return {
        "scenario": name,
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ms_per_step": round(1000 * wall / steps, 2) if steps else None,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(q[18], 3),
        "peak_gib": peak_gib(device),
        **extra,
    }


@torch.inference_mode()
def bench_generate_sequential(model: Any, prompts: list[list[int]], params: list[SamplingParams], device: str):
    reset_peak(device)
    latencies, outputs, start = [], [], time.perf_counter()
    for prompt, p in zip(prompts, params, strict=True):
        t = time.perf_counter()
        torch.manual_seed(p.seed)
        out = model.generate(torch.tensor([prompt], device=device), **generate_kwargs(p))
        sync(device)
        latencies.append(time.perf_counter() - t)
        outputs.append(out.sequences[0, len(prompt) :].tolist())
    wall = time.perf_counter() - start
    tokens = sum(p.max_new_tokens for p in params)
    steps = sum(p.max_denoising_steps * p.max_new_tokens // model.config.canvas_length for p in params)
    return summary("generate, one at a time", latencies, wall, tokens, steps, device), outputs


@torch.inference_mode()
def bench_generate_static(model: Any, prompts: list[list[int]], params: list[SamplingParams], device: str):
    reset_peak(device)
    start = time.perf_counter()
    torch.manual_seed(0)
    model.generate(torch.tensor(prompts, device=device), **generate_kwargs(params[0]))
    sync(device)
    wall = time.perf_counter() - start
    steps = params[0].max_denoising_steps * params[0].max_new_tokens // model.config.canvas_length
    tokens = sum(p.max_new_tokens for p in params)
    return summary(f"generate, static batch {len(prompts)}", [wall] * len(prompts), wall, tokens, steps, device)


def bench_engine(
    model: Any,
    prompts: list[list[int]],
    params: list[SamplingParams],
    device: str,
    rows: int,
    arrival_rate: float | None = None,
    engine_thread: bool = False,
):
    """All requests at once (arrival_rate None) or Poisson arrivals at `arrival_rate` requests/s.

    The engine loop runs in this (the main) thread and a helper thread submits, as a worker's job threads
    would. On the CPU the loop's thread used to matter (OpenMP's threads of a second thread sleep between
    ops once the process has more of them than cores); the engine now runs a CPU pass as groups of rows on
    single-threaded workers (worker/engine/cpu_pool.py), so it matters less. On a GPU the thread only
    launches kernels.
    """
    started = time.perf_counter()
    engine = Engine(model, max_rows=rows, **ENGINE_OPTIONS)
    start_s = time.perf_counter() - started
    reset_peak(device)
    submitted: dict[str, float] = {}
    finished: dict[str, float] = {}
    handles = []

    def on_event(rid: str, kind: str, _data: dict[str, Any]) -> None:
        if kind == "finished":
            finished[rid] = time.perf_counter()

    def submit_all() -> None:
        rng = random.Random(0)
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            submitted[f"r{i}"] = time.perf_counter()
            handles.append(engine.submit(Request(f"r{i}", tuple(prompt), p), on_event=on_event))
            if arrival_rate:
                time.sleep(rng.expovariate(arrival_rate))

    start = time.perf_counter()
    if engine_thread:  # as the worker runs it: the loop in its own thread, the caller only submits and waits
        engine.start()
        submit_all()
        for h in handles:
            h.wait()
        engine.stop()
    elif arrival_rate:
        submitter = threading.Thread(target=submit_all)
        submitter.start()
        engine.serve(until=lambda: len(finished) == len(prompts))
        submitter.join()
    else:
        submit_all()
        engine.run_until_idle()
    sync(device)
    wall = time.perf_counter() - start
    latencies = [finished[k] - submitted[k] for k in submitted]
    tokens = sum(p.max_new_tokens for p in params)
    how = f"arrivals {arrival_rate:.1f}/s" if arrival_rate else "arriving together"
    how += ", loop in its own thread" if engine_thread else ""
    graphs = engine.graphs
    how += f", graphs {graph_label(engine)}"
    stats = engine.stats
    mean_rows = round(stats["rows_in_decoder"] / max(stats["decoder_passes"], 1), 2)
    result = summary(
        f"engine, {rows} rows, {how}",
        latencies,
        wall,
        tokens,
        stats["decoder_passes"],
        device,
        mean_rows_per_pass=mean_rows,
        slot_bytes=engine.slot_bytes,
        slots=engine.scheduler.max_rows,
        engine_start_s=round(start_s, 2),
        graphs_captured=len(graphs.graphs) if graphs else 0,
        graph_passes=stats["graph_passes"],
    )
    return result, [h.wait(0).token_ids for h in handles]


def graph_label(engine: Engine) -> str:
    """What the engine's decoder passes ran as: captured graphs, uncaptured buckets, or eager ("off")."""
    if engine.graphs is None:
        cuda_auto = engine.runner.device.type == "cuda" and ENGINE_OPTIONS.get("graphs", "auto") == "auto"
        blocker = capture_blocker(engine.runner) if cuda_auto else None
        return "off" if blocker is None else f"off (not capturable: {blocker})"
    return "uncaptured" if not engine.graphs.captured else "captured"


def text_weight_bytes(model: Any) -> int:
    """Bytes of the weights a denoising step reads: the decoder stack (tied with the encoder's and with
    the lm_head) and its self-conditioning MLP; the vision tower is not read."""
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.model.decoder.parameters()}
    return sum(unique.values())


def copy_bandwidth(device: str) -> float:
    """Bytes per second moved by a large device-to-device copy (read plus write), best of five."""
    n = 2**30 if device == "cuda" else 2**28
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


def ready_engine(
    model: Any, prompts: list[list[int]], params: list[SamplingParams], rows: int, **options: Any
) -> Engine:
    """An engine whose `rows` rows have all prefilled and are denoising."""
    engine = Engine(model, max_rows=rows, **(ENGINE_OPTIONS | options))
    for i in range(rows):
        engine.submit(Request(f"p{i}", tuple(prompts[i % len(prompts)]), params[i % len(params)]))
    while len(engine.rows) < rows or any(row.phase is not Phase.DENOISE for row in engine.rows):
        engine.step()
    return engine


def flops_per_canvas_token(model: Any, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    """FLOPs of one row's step (decoder pass, lm_head, self-conditioning embeddings) per canvas token,
    counted on eager passes (a graph's replay runs no torch op the counter sees)."""
    from torch.utils.flop_counter import FlopCounterMode

    engine = ready_engine(model, prompts, params, rows=1, graphs="off")
    with FlopCounterMode(display=False) as counter:
        engine.step()
    return counter.get_total_flops() / model.config.canvas_length


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts Python-level reads of values on `device` (`.item()`, `.tolist()`, `bool()`, `.cpu()`,
    nonzero, multinomial's checks). On the CPU that includes reads of host copies."""

    NAMES = frozenset(("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero", "multinomial"))

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device, self.count = device, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        reads = getattr(func, "__name__", "") in self.NAMES
        device = args[0].device.type if args and isinstance(args[0], torch.Tensor) else None
        self.count += reads and device == self.device
        return func(*args, **(kwargs or {}))


LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def launches_and_syncs(prof: Any, device: str) -> tuple[int, int, int]:
    """(kernels run, host syncs, launch calls from the host: a graph's replay is one) in a profile; on the
    CPU (top-level ATen ops, 0, the same ops)."""
    from torch.autograd import DeviceType

    events = prof.events()
    if device != "cuda":
        top = [
            e
            for e in events
            if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
        ]
        return len(top), 0, len(top)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))]
    waits = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    return len(kernels), sum(e.name in waits for e in events), sum(e.name in LAUNCH_CALLS for e in events)


def profile_steps(device: str, run: Any, steps: int) -> dict[str, float]:
    """Host reads, kernel launches and syncs per step of `run()`, which makes `steps` denoising steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with HostReads(device) as reads, profile(activities=activities) as prof:
        run()
        sync(device)
    launches, syncs, calls = launches_and_syncs(prof, device)
    return {
        "host_reads_per_step": round(reads.count / steps, 1),
        "launches_per_step": round(launches / steps, 1),
        "launch_calls_per_step": round(calls / steps, 1),
        "syncs_per_step": round(syncs / steps, 1),
    }


def profile_engine(model: Any, prompts: list[list[int]], params: list[SamplingParams], device: str, rows: int):
    engine = ready_engine(model, prompts, params, rows)
    ticks = 3

    def run() -> None:
        for _ in range(ticks):
            engine.step()

    return profile_steps(device, run, ticks)


@torch.inference_mode()
def profile_generate(model: Any, prompt: list[int], p: SamplingParams, device: str) -> dict[str, float]:
    def run() -> None:
        torch.manual_seed(p.seed)
        model.generate(torch.tensor([prompt], device=device), **generate_kwargs(p))

    return profile_steps(device, run, p.max_denoising_steps * (p.max_new_tokens // model.config.canvas_length))


def roofline(result: dict[str, Any], flops_token: float, canvas: int, floor_ms: float, peak: float | None) -> None:
    """Adds model FLOP utilisation and the step time over the weight-read floor to an engine scenario."""
    rows, ms = result.get("mean_rows_per_pass", 1), result["ms_per_step"]
    achieved = flops_token * rows * canvas / (ms / 1000)
    result["tflops"] = round(achieved / 1e12, 2)
    result["mfu"] = round(achieved / (peak * 1e12), 3) if peak else None
    result["x_weight_floor"] = round(ms / floor_ms, 2)


def print_rounds(rounds: dict[str, list[tuple[float, float]]]) -> None:
    """Per engine scenario over the rounds: each round's multiple of that round's generate(), their median,
    and the medians of both throughputs (generate() alone varies from run to run on a shared machine)."""
    for scenario, pairs in rounds.items():
        summary_ = {
            "scenario": scenario,
            "rounds": len(pairs),
            "x_generate_each": [round(e / g, 2) for e, g in pairs],
            "x_generate_median": round(statistics.median(e / g for e, g in pairs), 2),
            "engine_tok_s_median": round(statistics.median(e for e, _ in pairs), 1),
            "generate_tok_s_median": round(statistics.median(g for _, g in pairs), 1),
        }
        print(json.dumps(summary_), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small", choices=["small", "26b"])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per canvas (16 small, 48 26b)")
    parser.add_argument("--canvases", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (64 small, 128 26b)")
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="tokens of each engine row's K/V slot (default: prompt plus canvases, what the scenarios need)",
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--skip-static", action="store_true", help="skip generate() as one static batch")
    parser.add_argument(
        "--engine-thread",
        action="store_true",
        help="run the engine loop in its own thread, as the worker does (no Poisson scenarios)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run sequential generate() and the engine scenarios this many times, alternating, and print "
        "each engine scenario's median multiple (the arrival scenarios and --profile run in the first only)",
    )
    parser.add_argument("--profile", action="store_true", help="host reads and kernel launches per step")
    parser.add_argument(
        "--graphs", default="on", choices=list(GRAPH_MODES), help="decoder passes in CUDA graphs (see above)"
    )
    parser.add_argument("--skip-arrivals", action="store_true", help="skip the Poisson-arrival scenarios")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the MFU")
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="run sequential generate() on only the first N requests (it is the slowest scenario)",
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    steps = args.steps or (48 if args.arch == "26b" else 16)
    prompt_len = args.prompt or (128 if args.arch == "26b" else 64)
    ENGINE_OPTIONS["max_context"] = args.max_context or prompt_len + args.canvases * CANVAS[args.arch]
    t = time.perf_counter()
    model = build(args.arch, device, dtype)
    vocab = model.config.text_config.vocab_size
    machine = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        json.dumps(
            {
                "arch": args.arch,
                "device": machine,
                "dtype": str(dtype),
                "steps": steps,
                "canvas": CANVAS[args.arch],
                "canvases": args.canvases,
                "prompt": prompt_len,
                "max_context": ENGINE_OPTIONS["max_context"],
                "requests": args.requests,
                "build_s": round(time.perf_counter() - t, 1),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
    rng = random.Random(1)
    prompts = [[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(args.requests)]
    params = [fixed_params(steps, args.canvases, CANVAS[args.arch], seed=i) for i in range(args.requests)]
    warm = fixed_params(2, 1, CANVAS[args.arch], 0)
    bench_generate_sequential(model, prompts[:1], [warm], device)  # warm-up (lazy init, kernels)
    modes = GRAPH_MODES[args.graphs]
    for mode in modes:
        ENGINE_OPTIONS["graphs"] = mode
        bench_engine(model, prompts[:2], [warm, warm], device, rows=2)

    canvas = CANVAS[args.arch]
    flops_token = flops_per_canvas_token(model, prompts, params)
    bandwidth = copy_bandwidth(device)
    floor_ms = 1000 * text_weight_bytes(model) / bandwidth
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in machine), None)
    roof = {"gflop_per_canvas_token": round(flops_token / 1e9, 4), "copy_gb_s": round(bandwidth / 1e9, 1)}
    roof |= {"text_weight_gb": round(text_weight_bytes(model) / 1e9, 2), "weight_floor_ms": round(floor_ms, 2)}
    print(json.dumps(roof | {"peak_tflops": peak}), flush=True)
    if args.profile:
        print(json.dumps({"profile": "generate, one row"} | profile_generate(model, prompts[0], params[0], device)))

    results: list[dict[str, Any]] = []
    rounds: dict[str, list[tuple[float, float]]] = {}  # scenario -> (engine tok/s, generate tok/s) per round
    k = args.baseline_requests or args.requests
    for round_ in range(args.rounds):  # generate() and the engine alternate, so both meet the same conditions
        sequential, reference = bench_generate_sequential(model, prompts[:k], params[:k], device)
        results.append(sequential)
        print(json.dumps(sequential), flush=True)
        if not args.skip_static and round_ == 0:
            results.append(bench_generate_static(model, prompts, params, device))
            print(json.dumps(results[-1]), flush=True)
        for rows in [int(c) for c in args.concurrency.split(",")]:
            for mode in modes:  # with and without graphs side by side, so both meet the same conditions
                ENGINE_OPTIONS["graphs"] = mode
                together, outputs = bench_engine(model, prompts, params, device, rows, engine_thread=args.engine_thread)
                same = sum(o == r[: len(o)] for r, o in zip(reference, outputs[:k], strict=True))
                together["outputs_equal_to_generate"] = f"{same}/{k}"
                together["x_generate"] = round(together["tokens_per_s"] / sequential["tokens_per_s"], 2)
                rounds.setdefault(together["scenario"], []).append(
                    (together["tokens_per_s"], sequential["tokens_per_s"])
                )
                roofline(together, flops_token, canvas, floor_ms, peak)
                results.append(together)
                print(json.dumps(together), flush=True)
                if args.profile and round_ == 0:
                    profile = profile_engine(model, prompts, params, device, rows)
                    print(json.dumps({"profile": f"engine, {rows} rows, graphs {mode}"} | profile), flush=True)
                if args.engine_thread or args.skip_arrivals or round_ > 0:
                    continue
                capacity = len(prompts) / together["wall_s"]
                spread, _ = bench_engine(model, prompts, params, device, rows, arrival_rate=0.8 * capacity)
                results.append(spread)
                print(json.dumps(spread), flush=True)
    if args.rounds > 1:
        print_rounds(rounds)
    print(
        f"\n{'scenario':76} {'tok/s':>8} {'ms/step':>8} {'x gen':>6} {'MFU':>6} {'x floor':>8} {'p50 s':>7} {'GiB':>6}"
    )
    for r in results:
        print(
            f"{r['scenario']:76} {r['tokens_per_s']:>8} {r['ms_per_step'] or '-':>8} {r.get('x_generate', '-'):>6} "
            f"{r.get('mfu') or '-':>6} {r.get('x_weight_floor', '-'):>8} {r['p50_s']:>7} {r['peak_gib'] or '-':>6}"
        )


if __name__ == "__main__":
    main()
