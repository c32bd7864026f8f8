"""Synthetic training data from a teacher VLM: generation, filtering, LLaVA/WebDataset export."""
