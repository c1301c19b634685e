"""Models: finding their files (`locate`: local folder, packaged weights, the local Hugging Face
cache), loading them (`loading`), tiny random-weight builds (`tiny`), what a config needs and this
machine lacks (`needs`), batches sized to free memory (`batching`), models kept per worker
(`inference`), the rewriter's template and log-probs (`rewriter`) and ImageReward's network
(`image_reward_net`)."""
