"""Fine-tuning on a real DeepSpeed engine: config, data, models, the session, schedules."""
