"""The worker's `canvas` commands, a plug-in of the `canvas` command (shared/cli.py): workers, the embedded
stack (`canvas up`, `canvas demo`), training the demo model, and tiny test models.

Heavy imports (torch) happen inside the commands that need them. Knows the API only as a process that
worker/stack.py starts (`python -m api.serve`), never by import. `python -m worker.cli ...` runs `canvas`.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from shared.cli import Commands, main
from shared.settings import Settings

if TYPE_CHECKING:
    from worker.stack import Stack

GPUS_HELP = "'auto', 'none' (one CPU process) or a list like 0,1"


def cmd_models_make_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from worker.tiny import make_tiny

    path = make_tiny(Path(args.directory), seed=args.seed, canvas_length=args.canvas_length)
    print(f"wrote a tiny random DiffusionGemma to {path}")
    return 0


def cmd_models_quantize(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from worker.quantized.checkpoint import quantize_checkpoint
    from worker.quantized.codecs import QuantizationError

    started = time.monotonic()
    try:
        record = quantize_checkpoint(
            Path(args.src),
            Path(args.dst),
            args.method,
            device=args.device,
            shard_bytes=int(args.shard_gb * 2**30),
            **({} if args.min_weights is None else {"min_weights": args.min_weights}),
        )
    except QuantizationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = record["weight_bytes"] / 2**30
    print(f"wrote {args.dst}: {args.method}, {size:.2f} GiB of weights in {time.monotonic() - started:.1f}s")
    print(f"serve it: canvas models add NAME {args.dst}")
    return 0


def cmd_worker_serve(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve

    return serve([m for m in args.models.split(",") if m], args.gpus, args.loglevel)


def cmd_worker_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve_webhooks

    return serve_webhooks(args.concurrency, args.loglevel)


def cmd_worker_train(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve_train

    return serve_train(args.gpus, args.loglevel)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from worker.stack import embedded_stack

    try:
        return _run_stack(embedded_stack(port=args.port))
    except KeyboardInterrupt:  # during start-up: everything started so far is stopped already
        print("\nstopped during start-up", flush=True)
        return 130


def _run_stack(stack_context: AbstractContextManager[Stack]) -> int:
    with stack_context as stack:
        print(f"\nCanvas is up at {stack.url}  (model {stack.model})")
        print(f"admin key (shown once): {stack.admin_key}")
        print(f"try: curl -H 'Authorization: Bearer {stack.admin_key}' {stack.url}/v1/models")
        print(f"dashboard: {stack.url}/admin (log in with the admin key)")
        print(f"logs: {stack.log_dir}/ (api, worker, webhooks, train)")
        if stack.metrics_port:
            ports = f"{stack.metrics_port}-{stack.metrics_port + 2}"
            print(f"metrics: {stack.url}/metrics, and the workers' on ports {ports}")
        print("Ctrl-C (or SIGTERM) stops everything.\n", flush=True)
        try:
            polls = 0
            while all(p.poll() is None for p in stack.processes):
                time.sleep(0.5)
                polls += 1
                if polls % 10 == 0:  # a model added while the stack runs is served within seconds
                    for name in stack.serve_new_models():
                        print(f"now serving {name} too", flush=True)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the stack takes it as Ctrl-C)
            print("\nstopping…", flush=True)
        failed = [p.args for p in stack.processes if p.poll() not in (None, 0)]
    print("stopped: every process of the stack has exited", flush=True)
    return 1 if failed else 0


def cmd_train_demo(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import fields

    from worker.training.demo_model.train import Recipe, train_demo

    given = {f.name: getattr(args, f.name, None) for f in fields(Recipe)}
    recipe = Recipe(**{name: value for name, value in given.items() if value is not None})
    figures = train_demo(Path(args.out), recipe)
    print(f"wrote {args.out}: {figures}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import run_demo
    from worker.demo_webhooks import WebhookCatcher
    from worker.stack import embedded_stack, print_log_tails

    try:
        # The demo's webhook receiver listens on 127.0.0.1, which the SSRF guard lets through for it only.
        with WebhookCatcher() as hook, embedded_stack(webhook_allow="127.0.0.1/32") as stack:
            print(f"Canvas is up at {stack.url}; running the demo jobs on {stack.model}", flush=True)
            print(f"(logs in {stack.log_dir})\n", flush=True)
            code = run_demo(stack.url, stack.admin_key, stack.model, hook)
            if code and stack.log_dir is not None:
                print_log_tails(stack.log_dir)
    except KeyboardInterrupt:
        print("demo interrupted: all processes stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("demo finished: all processes stopped" if code == 0 else "demo FAILED", flush=True)
    return code


def register(commands: Commands) -> None:
    """canvas worker serve|train|webhooks, up, demo, train demo, models make-tiny|quantize."""
    commands.group("worker", help="workers")
    serve = commands.action("worker", "serve", help="one generation worker per GPU", fn=cmd_worker_serve)
    serve.add_argument("--gpus", default="auto", help=GPUS_HELP)
    serve.add_argument("--models", required=True, help="comma-separated model names")
    serve.add_argument("--loglevel", default="INFO")
    train = commands.action(
        "worker", "train", help="fine-tuning workers, one job at a time per GPU", fn=cmd_worker_train
    )
    train.add_argument("--gpus", default="auto", help=GPUS_HELP)
    train.add_argument("--loglevel", default="INFO")
    hooks = commands.action("worker", "webhooks", help="the webhook delivery worker (CPU)", fn=cmd_worker_webhooks)
    hooks.add_argument("--concurrency", type=int, default=8)
    hooks.add_argument("--loglevel", default="INFO")

    commands.command("up", help="run the embedded stack until Ctrl-C", fn=cmd_up).add_argument(
        "--port", type=int, default=8000
    )
    commands.command("demo", help="run the embedded stack, submit demo jobs, stop", fn=cmd_demo)
    _register_training(commands)

    commands.group("models", help="the model registry")
    tiny = commands.action("models", "make-tiny", help="write a tiny random DiffusionGemma", fn=cmd_models_make_tiny)
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--canvas-length", type=int, default=32)
    quantize_help = "write a quantized copy of a DiffusionGemma checkpoint, one tensor at a time"
    quantize = commands.action("models", "quantize", help=quantize_help, fn=cmd_models_quantize)
    quantize.add_argument("src", help="a bf16/fp32 DiffusionGemma directory (safetensors)")
    quantize.add_argument("dst", help="the new directory (must not exist)")
    # no argparse choices: the converter names the known methods itself, for callers other than this one too
    quantize.add_argument("--method", required=True, help="nf4 | int8 | fp8")
    quantize.add_argument("--device", help="where to quantize (default: the GPU if there is one)")
    quantize.add_argument("--shard-gb", type=float, default=2.0, help="size of the output's shards")
    quantize.add_argument(
        "--min-weights",
        type=int,
        help="tensors with fewer weights stay unquantized (default: MIN_WEIGHTS in worker/quantized/layout.py)",
    )


def _register_training(commands: Commands) -> None:
    commands.group("train", help="train models of our own")
    demo_help = "train the demo model from scratch (Sudoku and text tasks)"
    demo = commands.action("train", "demo", help=demo_help, fn=cmd_train_demo)
    demo.add_argument("--out", default="models/canvas-demo")
    for name in ("hidden", "layers", "steps", "batch_size", "warmup_steps", "sudoku"):
        demo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    for name in ("learning_rate", "sudoku_share", "minutes", "encoder_loss_weight"):
        demo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float)
    demo.add_argument("--init-from", dest="init_from", help="continue from this model's weights")
    demo.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast on a GPU (default on)")


__all__ = ["main", "register"]

if __name__ == "__main__":
    sys.exit(main())
