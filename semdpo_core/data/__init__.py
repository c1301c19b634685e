"""Input data: prompt and pair sources of every kind (`prompt_sources`), datasets read with Hugging
Face `datasets` (`hub_datasets`), `semdpo data build` (`build`), and the packaged demo files beside
them (train_prompts.txt, test_prompts.txt, sft_pairs.jsonl)."""
