"""The method comparison: every adapter method fine-tuned at the same budget (``lorax-bench``)."""
