"""tunelab: Pareto precision tuning for LLMs on Tenstorrent hardware through tt-transformers."""
