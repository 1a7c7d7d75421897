"""Models and adapters loaded on demand stay within the worker's memory budget: least recently used out
first, never one a job is using (the job that needs room waits for it); a load that fails or cannot fit
fails with its catalog code. Real tiny model, real LoRA adapters, real engines, CPU."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from shared.job_errors import JobError
from shared.registry import describe_model_dir
from tests.conftest import TINY
from worker.engine import Request, SamplingParams
from worker.host import LoadedModel, ModelHost, load_model, weight_bytes
from worker.model_cache import Interrupted
from worker.training.lora import add_lora, save_adapter


def make_adapter(base_dir: Path, path: Path, seed: int) -> str:
    """A LoRA adapter of the model in `base_dir` with random non-zero weights (rank 4), saved at `path`."""
    peft_model = add_lora(DiffusionGemmaForBlockDiffusion.from_pretrained(base_dir), 4, 8)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    save_adapter(peft_model, path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three different LoRA adapters of the tiny model."""
    folder = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model_dir, folder / name, seed) for seed, name in enumerate(("a", "b", "c"))}


def host_with(tiny_model_dir: Path, cache_bytes: int) -> ModelHost:
    host = ModelHost(cache_bytes)
    host.add(load_model(TINY, tiny_model_dir, describe_model_dir(tiny_model_dir)["eos_token_ids"]))
    return host


def answer(loaded: LoadedModel, adapter: str | None) -> list[int]:
    params = SamplingParams(max_new_tokens=12, seed=1)
    handle = loaded.engine.submit(
        Request(f"r-{adapter}-{time.monotonic()}", (2, 70), params, frozenset(), adapter=adapter)
    )
    return handle.wait(60).token_ids


def adapter_bytes(tiny_model_dir: Path, path: str) -> int:
    host = host_with(tiny_model_dir, 1 << 30)
    with host.using(TINY, adapter=("probe", path)):
        return host.cache.entries["adapter:probe"].bytes


def test_the_least_recently_used_idle_adapter_goes_first_and_answers_do_not_change(
    tiny_model_dir: Path, adapters: dict[str, str]
) -> None:
    size = adapter_bytes(tiny_model_dir, adapters["a"])
    host = host_with(tiny_model_dir, 2 * size + size // 2)  # room for two adapters
    first = {}
    for name in ("a", "b", "a"):  # a, then b, then a again: b is the least recently used
        with host.using(TINY, adapter=(name, adapters[name])) as loaded:
            first[name] = answer(loaded, name)
    with host.using(TINY, adapter=("c", adapters["c"])) as loaded:
        answer(loaded, "c")
    assert set(host.cache.entries) == {"adapter:a", "adapter:c"}
    assert host.models[TINY].adapters == {"a", "c"}
    assert host.cache.used <= host.cache.budget
    with host.using(TINY, adapter=("b", adapters["b"])) as loaded:  # b again: loaded anew, same answer
        assert answer(loaded, "b") == first["b"]
        assert "a" not in loaded.adapters  # evicted for it (c was used more recently)
    assert set(host.cache.entries) == {"adapter:c", "adapter:b"}
    with host.using(TINY, adapter=("a", adapters["a"])) as loaded:
        assert answer(loaded, "a") == first["a"]
        assert answer(loaded, None) == answer(host_with(tiny_model_dir, 1).models[TINY], None)  # base intact


def test_an_adapter_in_use_is_never_evicted_the_job_needing_room_waits(
    tiny_model_dir: Path, adapters: dict[str, str]
) -> None:
    host = host_with(tiny_model_dir, adapter_bytes(tiny_model_dir, adapters["a"]) * 3 // 2)  # room for one
    loaded_b = threading.Event()

    def second_job() -> None:
        with host.using(TINY, adapter=("b", adapters["b"])):
            loaded_b.set()

    with host.using(TINY, adapter=("a", adapters["a"])) as loaded:
        before = answer(loaded, "a")
        waiting = threading.Thread(target=second_job)
        waiting.start()
        assert not loaded_b.wait(1.0)  # b waits: a is in use
        assert loaded.adapters == {"a"} and answer(loaded, "a") == before
    waiting.join(30)
    assert loaded_b.is_set() and set(host.cache.entries) == {"adapter:b"}
    assert host.models[TINY].adapters == {"b"}


def test_a_job_told_to_stop_while_waiting_for_room_stops(tiny_model_dir: Path, adapters: dict[str, str]) -> None:
    host = host_with(tiny_model_dir, adapter_bytes(tiny_model_dir, adapters["a"]) * 3 // 2)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with (
        host.using(TINY, adapter=("a", adapters["a"])),
        pytest.raises(Interrupted),
        host.using(TINY, adapter=("b", adapters["b"]), should_stop=stop.is_set),
    ):
        pass
    assert set(host.cache.entries) == {"adapter:a"}


def test_full_fine_tunes_are_evicted_whole_and_load_errors_have_their_codes(
    tiny_model_dir: Path, adapters: dict[str, str], tmp_path: Path
) -> None:
    copies = [shutil.copytree(tiny_model_dir, tmp_path / name) for name in ("ft1", "ft2")]
    eos = describe_model_dir(tiny_model_dir)["eos_token_ids"]
    size = weight_bytes(host_with(tiny_model_dir, 0).models[TINY].model)
    host = host_with(tiny_model_dir, size * 3 // 2)  # room for one full fine-tune
    with host.using("ft1", full=(str(copies[0]), eos, None)) as ft1:
        engine = ft1.engine
        answer(ft1, None)
    with host.using("ft2", full=(str(copies[1]), eos, None)) as ft2:
        answer(ft2, None)
        assert set(host.models) == {TINY, "ft2"} and not engine._thread.is_alive()  # ft1 stopped and gone

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(JobError) as failed, host.using("ft3", full=(str(broken), eos, None)):
        pass
    assert failed.value.code == "model_load_failed" and "ft3" in failed.value.message
    with pytest.raises(JobError) as failed, host.using(TINY, adapter=("gone", str(tmp_path / "nowhere"))):
        pass
    assert failed.value.code == "adapter_not_loaded"
    with pytest.raises(JobError) as failed, host.using("huge", full=(str(copies[0]), eos, 10 * size)):
        pass
    assert failed.value.code == "model_too_large"
    assert "ft3" not in host.models and set(host.cache.entries) <= {"model:ft2"}  # failed loads hold nothing
