"""The trainer: stages, optimizer, recipe, where training runs and its bookkeeping."""
