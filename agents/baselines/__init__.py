"""What the learned controller is measured against: the recipe search space, Optuna and random search, Ray Tune search, PBT, fixed recipes."""
