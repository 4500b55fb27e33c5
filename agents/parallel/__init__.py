"""Running many fine-tuning episodes at once: starting or joining Ray on loopback, VecEnvs of processes or Ray actors."""
