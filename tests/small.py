"""A very small pipeline config for end-to-end tests: a few prompts, two shards, two methods."""

SMALL = {
    "shard_size": 4,
    "data": {"max_train_prompts": 8, "max_test_prompts": 4},
    "sft": {"epochs": 1},
    "candidates": {"num_candidates": 2, "max_new_tokens": 12},
    "render": {"num_inference_steps": 2, "height": 32, "width": 32},
    "train": {"epochs": 1, "methods": ["dpo", "sem_dpo"]},
    "evaluate": {"max_new_tokens": 12},
}
