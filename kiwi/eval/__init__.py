"""Evaluation: lm-eval-exact multiple choice (HellaSwag, ARC-Challenge, OpenBookQA), lm-eval wikitext
rolling perplexity, the training run's held-out perplexity, and base-vs-upscaled reports."""
