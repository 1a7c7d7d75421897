"""The demo model: seeded task generators and the recipe that trains a small DiffusionGemma from scratch."""
