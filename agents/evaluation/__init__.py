"""Running the methods on held-out instances: the held-out table (policy, recipe, no control) and the matched-compute comparison."""
