"""Learners, baselines and the programs users run: train_agent, tune, evaluate, compare."""
