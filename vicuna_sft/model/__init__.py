"""The model: loading (tokenizer, causal LM with its attention variant), the builtin tiny model."""
