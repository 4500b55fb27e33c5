"""Learning a controller: SB3 PPO/DQN and tabular Q-learning, the training run, the saved agent folder."""
