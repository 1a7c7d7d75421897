"""GPU-pinned Celery workers: model hosting, generation tasks, the engine, training, webhook delivery."""
