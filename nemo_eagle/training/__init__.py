"""Training: typed run configs, data planning, callbacks, freezing/LoRA, precision recipes, the train CLI."""
