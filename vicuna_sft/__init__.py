"""vicuna_sft: Vicuna-style supervised fine-tuning with one transformers Trainer flow."""

__version__ = "0.1.0"
