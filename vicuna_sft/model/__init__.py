"""The model: loading (tokenizer, causal LM with its attention and loss variants), the loss, the builtin tiny model."""
