"""Open-weight models on campus GPUs: the catalogue, vLLM serve profiles, capacity plans,
registering running servers, and the demo model (no GPU needed)."""
