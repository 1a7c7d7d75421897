"""Quantized DiffusionGemma: nf4 and int8 (bitsandbytes) and fp8 (PyTorch scaled matmuls) weights for the
whole model, experts included; a streaming checkpoint converter and a loader that builds on `meta`."""
