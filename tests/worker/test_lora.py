"""LoRA on DiffusionGemma: encoder and decoder share the adapted modules; several adapters load next to
one base; each request uses its own adapter inside one engine."""

from __future__ import annotations

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.training.lora import add_lora, load_adapter, save_adapter


def trained_adapter(tiny_model_dir, tmp_path, name: str, seed: int):
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir)
    peft_model = add_lora(model, 4, 8)
    torch.manual_seed(seed)
    with torch.no_grad():  # stand-in for training: non-zero LoRA weights so the adapter changes outputs
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    save_adapter(peft_model, tmp_path / name)
    return tmp_path / name


def test_encoder_and_decoder_share_the_adapted_modules(tiny_model_dir) -> None:
    peft_model = add_lora(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir), 4, 8)
    inner = peft_model.get_base_model()
    for enc, dec in zip(inner.model.encoder.language_model.layers, inner.model.decoder.layers, strict=True):
        assert enc.self_attn.q_proj is dec.self_attn.q_proj
        assert hasattr(dec.self_attn.q_proj, "lora_A")


def test_two_adapters_on_one_base_answer_as_they_do_alone(tiny_model_dir, tmp_path) -> None:
    paths = {name: trained_adapter(tiny_model_dir, tmp_path, name, seed) for seed, name in enumerate(("a", "b"))}
    requests = [
        Request(f"{name}{i}", (2, 70 + i), SamplingParams(max_new_tokens=20, seed=i), frozenset(), adapter=name)
        for i in range(4)
        for name in (*paths, None)
    ]

    def engine_with(names: list[str]) -> Engine:
        engine = Engine(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), max_rows=16)
        for name in names:
            engine.add_adapter(name, lambda model, n=name: load_adapter(model, paths[n], n))
        return engine

    together = engine_with(list(paths))
    handles = [together.submit(r) for r in requests]
    together.run_until_idle()
    mixed = {r.request_id: h.wait(0).token_ids for r, h in zip(requests, handles, strict=True)}
    for name in (*paths, None):
        alone = engine_with([name] if name else [])
        mine = [r for r in requests if r.adapter == name]
        hs = [alone.submit(r) for r in mine]
        alone.run_until_idle()
        assert [mixed[r.request_id] for r in mine] == [h.wait(0).token_ids for h in hs]
    assert [mixed[f"a{i}"] for i in range(4)] != [mixed[f"b{i}"] for i in range(4)]
