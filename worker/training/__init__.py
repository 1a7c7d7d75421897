"""Fine-tuning DiffusionGemma with the block-diffusion objective: data, loss, LoRA, the training loop."""
