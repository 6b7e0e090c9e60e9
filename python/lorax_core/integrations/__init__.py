"""Bridges to other libraries: PEFT adapter files, transformers training callbacks."""
