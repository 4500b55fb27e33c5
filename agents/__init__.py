"""The programs users run, one thin command-line module each (train_agent, evaluate, tune, compare,
optuna_baseline, pbt_baseline, bench_parallel), and the machinery behind them by job:

    learners/    SB3 PPO/DQN, tabular Q-learning, the training run, the saved agent folder
    baselines/   the recipe search space, Optuna/random search, Ray Tune search, PBT, fixed recipes
    parallel/    Ray on loopback (start or join), VecEnvs of processes or Ray actors
    evaluation/  the methods run on held-out instances: held-out table, matched-compute comparison
    reporting/   statistics, tables, plots, MLflow

Layers import downwards only: trainers < envs < agents; inside agents, reporting and parallel
import nothing above them, and the commands import everything.
"""
