"""A synthetic text-to-image world with a known answer: a scene grammar, a procedural renderer,
pixel scorers (alignment and two preference tastes) and a word-level tokenizer over its vocabulary.

Nothing here imports Prefect; only numpy, PIL and (for the tokenizer) tokenizers/transformers.
"""
