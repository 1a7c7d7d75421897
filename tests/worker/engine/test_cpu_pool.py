"""The engine on a CPU with two intra-op threads: a pass's rows run as groups side by side, one per core
(worker/engine/cpu_pool.py). The suite runs with one thread (tests/conftest.py), so these tests build
their engines with two. Outputs are what one pass gives, and a fault stays in its row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from tests.worker.engine.test_engine import EOS, PARAMS, mixed_requests, reference, run
from tests.worker.engine.test_faults import healthy_others_unchanged, requests, run_all
from worker.engine import Engine, Request, SamplingParams
from worker.engine.cpu_pool import single_threaded_pool, split_evenly
from worker.engine.engine import NonFiniteLogits
from worker.engine.rows import Phase


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def grouped_engine(model, **kw) -> Engine:
    with torch_threads(2):
        engine = Engine(model, **kw)
    assert engine._cpu_pool is not None
    return engine


def rows_of_this_thread(engine: Engine) -> threading.local:
    """`.ids`: the request ids of the rows the calling thread computes now (a group's, or the pass's)."""
    local = threading.local()
    compute = engine._compute

    def tracked(rows, *args, **kwargs):
        local.ids = {row.request_id for row in rows}
        return compute(rows, *args, **kwargs)

    engine._compute = tracked
    return local


def counting_decodes(engine: Engine) -> list[int]:
    """Rows of each decoder pass the engine runs from now on (from any thread)."""
    sizes: list[int] = []
    decode = engine.runner.decode

    def counted(canvas, *args, **kwargs):
        sizes.append(canvas.shape[0])
        return decode(canvas, *args, **kwargs)

    engine.runner.decode = counted
    return sizes


def test_the_pools_workers_run_one_thread_and_nobody_elses_setting_changes() -> None:
    with torch_threads(2):
        pool = single_threaded_pool(2)
        mine = torch.get_num_threads()
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
    barrier = threading.Barrier(2, timeout=10)

    def workers_setting() -> tuple[str, int]:
        barrier.wait()  # two tasks at once: each runs on its own worker
        return threading.current_thread().name, torch.get_num_threads()

    seen = [f.result() for f in [pool.submit(workers_setting) for _ in range(2)]]
    pool.shutdown()
    assert mine == 2 and later == [2]
    assert len({name for name, _ in seen}) == 2 and all(n == 1 for _, n in seen)


def test_split_evenly_keeps_order_and_balances() -> None:
    assert split_evenly(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert split_evenly([1], 4) == [[1]]
    assert split_evenly(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]


OUT_OF_MEMORY_ALONE = torch.OutOfMemoryError("simulated: CUDA out of memory")


@pytest.mark.parametrize("params", PARAMS[:2])
def test_a_request_alone_on_a_worker_thread_reproduces_generate(model, params) -> None:
    """One row: its encoder and decoder passes run on one of the pool's single-threaded workers."""
    prompt = [2, 17, 33, 4, 90, 12, 7]
    engine = grouped_engine(model, max_rows=4)
    sizes = counting_decodes(engine)
    passes, draws = threads_of(engine, "_decode"), threads_of(engine, "_draw_tiles")
    handle = engine.submit(Request("alone", tuple(prompt), params, EOS))
    engine.run_until_idle()
    assert handle.wait(0).token_ids == reference(model, prompt, params)[0]
    assert sizes and set(sizes) == {1}
    # each pass's draws were a task of their own on the pool (beside the pass, when both cores are free)
    assert draws and len(draws) == len(passes) and threading.get_ident() not in draws


def threads_of(engine: Engine, method: str) -> list[int]:
    """The thread of each call of `engine.<method>` from now on."""
    seen: list[int] = []
    original = getattr(engine, method)

    def traced(*args, **kwargs):
        seen.append(threading.get_ident())
        return original(*args, **kwargs)

    setattr(engine, method, traced)
    return seen


@pytest.mark.parametrize(
    "error", [OUT_OF_MEMORY_ALONE, RuntimeError("simulated: the draws broke")], ids=["oom", "other"]
)
def test_a_failure_of_draws_beside_a_lone_pass_fails_that_row_and_the_engine_serves_on(model, error) -> None:
    engine = grouped_engine(model, max_rows=4)
    draw_tiles = engine._draw_tiles

    def failing(rows):
        if engine.stats["ticks"] == 3:
            raise error
        return draw_tiles(rows)

    engine._draw_tiles = failing
    handle = engine.submit(Request("alone", (2, 17, 33), SamplingParams(max_new_tokens=24, seed=1), EOS))
    engine.run_until_idle()
    with pytest.raises(type(error), match="simulated"):
        handle.wait(0)
    params = SamplingParams(max_new_tokens=24, seed=2)
    after = engine.submit(Request("after", (2, 17, 33), params, EOS))
    engine.run_until_idle()
    assert after.wait(0).token_ids == reference(model, [2, 17, 33], params)[0]


def test_grouped_passes_give_the_outputs_of_one_pass(model) -> None:
    """Mixed lengths, parameters, a pinned and constrained request and a fast-sampler one, with two
    threads (a pass in two groups of rows) and with one (one pass): the same tokens."""
    batch = [
        *mixed_requests(),
        Request("pins", (5, 6, 7), SamplingParams(max_new_tokens=24, seed=9), pinned={0: 11, 3: 12}),
        Request("fast", (8, 9), SamplingParams(max_new_tokens=40, seed=10, sampler="fast")),
    ]
    one_pass = [r.token_ids for r in run(model, batch, max_rows=8)]
    engine = grouped_engine(model, max_rows=8)
    sizes = counting_decodes(engine)
    handles = [engine.submit(r) for r in batch]
    engine.run_until_idle()
    assert [h.wait(0).token_ids for h in handles] == one_pass
    assert max(sizes) < 8 and engine.stats["rows_in_decoder"] > 2 * engine.stats["decoder_passes"]


def test_grouped_passes_in_the_engine_thread_serve_concurrent_submitters(model) -> None:
    batch = mixed_requests()
    one_pass = [r.token_ids for r in run(model, batch, max_rows=8)]
    engine = grouped_engine(model, max_rows=8).start()
    try:
        handles = [engine.submit(r) for r in batch]
        assert [h.wait(30).token_ids for h in handles] == one_pass
    finally:
        engine.stop()


def test_an_exception_in_one_rows_callback_fails_that_row_only(model) -> None:
    expected = run_all(grouped_engine(model, max_rows=8), requests())

    def on_event(request_id: str, kind: str, data: dict) -> None:
        if request_id == "r2" and kind == "draft" and data["step"] == 3:
            raise ValueError("the client's callback broke")

    got = run_all(grouped_engine(model, max_rows=8), requests(), on_event)
    assert isinstance(got["r2"], ValueError)
    healthy_others_unchanged(got, expected, "r2")


OUT_OF_MEMORY = [
    torch.OutOfMemoryError("simulated: CUDA out of memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: simulated"),
]


@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["gpu", "cpu-allocator"])
def test_out_of_memory_in_one_group_retries_the_rows_and_changes_no_output(model, error) -> None:
    expected = run_all(grouped_engine(model, max_rows=8), requests())
    engine = grouped_engine(model, max_rows=8)
    decode, mine = engine.runner.decode, rows_of_this_thread(engine)
    failures: list[int] = []

    def run_out_in_the_second_group(canvas, *args, **kwargs):
        if engine.stats["ticks"] == 4 and "r3" in mine.ids and canvas.shape[0] > 1:
            failures.append(canvas.shape[0])
            raise error
        return decode(canvas, *args, **kwargs)

    engine.runner.decode = run_out_in_the_second_group
    got = run_all(engine, requests())
    assert failures, "no pass of the second group ran out of memory"
    assert got == expected


def test_nan_logits_fail_their_row_only(model) -> None:
    expected = run_all(grouped_engine(model, max_rows=8), requests())
    engine = grouped_engine(model, max_rows=8)
    logits, mine = engine.runner.logits, rows_of_this_thread(engine)

    def nan_for_r0(hidden):
        out = logits(hidden)
        if engine.stats["ticks"] == 3 and "r0" in mine.ids:
            out[0, 5, 7] = torch.nan  # the first group holds the lowest slots, r0's first
        return out

    engine.runner.logits = nan_for_r0
    got = run_all(engine, requests())
    assert isinstance(got["r0"], NonFiniteLogits)
    healthy_others_unchanged(got, expected, "r0")


def test_out_of_memory_in_one_encoder_group_retries_its_rows_only(model) -> None:
    """The first prefill runs as two groups; the one holding r3 runs out of memory once: its rows encode
    again, the other group's rows are not encoded twice, and every output is what it would have been."""
    expected = run_all(grouped_engine(model, max_rows=8), requests())
    engine = grouped_engine(model, max_rows=8)
    encode, mine = engine.runner.encode, rows_of_this_thread(engine)
    prompts_encoded: list[str] = []
    failed: list[int] = []
    pass_ = engine._encode_pass

    def tracked(items):
        mine.items = items
        return pass_(items)

    def run_out_once(cache, ids, *args, **kwargs):
        if not failed and any(row.request_id == "r3" for row, _ in mine.items) and ids.shape[0] > 1:
            failed.append(ids.shape[0])
            raise torch.OutOfMemoryError("simulated: out of memory")
        encode(cache, ids, *args, **kwargs)
        prompts_encoded.extend(row.request_id for row, _ in mine.items if row.phase is Phase.PREFILL)

    engine._encode_pass, engine.runner.encode = tracked, run_out_once
    got = run_all(engine, requests())
    assert failed and got == expected
    assert sorted(prompts_encoded) == ["r0", "r1", "r2", "r3", "r4"]  # each prompt (one chunk) once


def test_another_error_in_one_group_fails_that_groups_rows_only(model) -> None:
    """A bug-like error inside one group's pass cannot be told apart by row: that group's rows fail, the
    other group's rows step on and finish as they would have."""
    expected = run_all(grouped_engine(model, max_rows=8), requests())
    engine = grouped_engine(model, max_rows=8)
    decode, mine = engine.runner.decode, rows_of_this_thread(engine)
    broken: list[set[str]] = []

    def break_r3s_group(canvas, *args, **kwargs):
        if engine.stats["ticks"] == 4 and "r3" in mine.ids and not broken:
            broken.append(set(mine.ids))
            raise ValueError("simulated: a broken kernel")
        return decode(canvas, *args, **kwargs)

    engine.runner.decode = break_r3s_group
    got = run_all(engine, requests())
    [group] = broken
    assert {rid for rid, out in got.items() if isinstance(out, ValueError)} == group
    assert {rid: out for rid, out in got.items() if rid not in group} == {
        rid: out for rid, out in expected.items() if rid not in group
    }
    assert 0 < len(group) < len(got)


def test_stop_shuts_the_pool_down(model) -> None:
    engine = grouped_engine(model, max_rows=4).start()
    workers = list(engine._cpu_pool._threads)  # this pool's threads
    assert len(workers) == 2 and all(t.is_alive() for t in workers)
    handle = engine.submit(Request("r", (2, 3), SamplingParams(max_new_tokens=8, seed=1)))
    handle.wait(30)
    engine.stop()
    assert engine._cpu_pool is None
    assert not any(t.is_alive() for t in workers)
