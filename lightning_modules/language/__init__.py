"""Language models: the char-level GPT."""
