"""Searches over runs: hyperparameter tuning and knowledge distillation."""
