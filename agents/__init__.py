"""The programs users run, one thin command-line module each (train_agent, evaluate, tune, compare,
headroom, optuna_baseline, pbt_baseline, bench_parallel, dashboard, report), and the rooms below them:

    learners/      SB3 PPO/DQN, tabular Q-learning, imitation, the training run, the saved agent folder
    baselines/     the rivals' machinery: the recipe search space, Optuna studies, Ray Tune search, PBT
    methods/       the one Method interface and one module per compared method (REGISTRY)
    experiments/   the one resumable runner and every experiment run through it
    parallel/      Ray on loopback (start or join), VecEnvs of processes or Ray actors
    integrations/  the controller inside your own loop: TrainerCallback, ask-and-tell
    reporting/     typed records, statistics, tables, plots, MLflow, results/REPORT.md

Layers import downwards only (tests/test_layout.py): trainers < envs < agents; inside agents,
reporting and parallel < learners and baselines < methods and integrations < experiments < commands.
"""
