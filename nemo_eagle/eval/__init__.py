"""Benchmark evaluation: official metrics, benchmark adapters, predictors (local model or endpoint), reports."""
