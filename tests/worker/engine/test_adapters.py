"""Rows of different LoRA adapters and of the base share one decoder pass and one encoder pass per tick,
and each row's output is what it is with its adapter alone."""

from __future__ import annotations

from transformers import DiffusionGemmaForBlockDiffusion

from tests.worker.test_lora import trained_adapter
from worker.engine import Engine, Request, SamplingParams
from worker.training.lora import load_adapter


def test_rows_of_two_adapters_and_the_base_share_each_ticks_passes(tiny_model_dir, tmp_path) -> None:
    paths = {name: trained_adapter(tiny_model_dir, tmp_path, name, seed) for seed, name in enumerate(("a", "b"))}
    requests = [
        Request(
            f"{name}{i}",
            tuple(range(2, 4 + 5 * i)),
            SamplingParams(max_new_tokens=40 + 10 * i, max_denoising_steps=6, seed=i),
            adapter=name,
        )
        for i in range(3)
        for name in ("a", None, "b")
    ]

    def engine_with(names: list[str]) -> Engine:
        engine = Engine(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), max_rows=16)
        for name in names:
            engine.add_adapter(name, lambda model, n=name: load_adapter(model, paths[n], n))
        return engine

    mixed = engine_with(list(paths))
    handles = [mixed.submit(r) for r in requests]
    mixed.run_until_idle()
    ticks = mixed.stats["ticks"]
    assert mixed.stats["decoder_passes"] <= ticks and mixed.stats["encoder_passes"] <= ticks
    assert mixed.stats["rows_in_decoder"] > 2 * mixed.stats["decoder_passes"]  # rows of several adapters a pass
    got = {r.request_id: h.wait(0).token_ids for r, h in zip(requests, handles, strict=True)}
    for name in ("a", None, "b"):
        alone = engine_with([name] if name else [])
        mine = [r for r in requests if r.adapter == name]
        hs = [alone.submit(r) for r in mine]
        alone.run_until_idle()
        assert [got[r.request_id] for r in mine] == [h.wait(0).token_ids for h in hs], name
    assert [got[f"a{i}"] for i in range(3)] != [got[f"b{i}"] for i in range(3)]
