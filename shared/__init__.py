"""Code shared by the API and the workers: settings, database, models, contracts. No torch, no Flask."""
