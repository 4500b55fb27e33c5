"""Turning episode results into statistics, tables (md/json/csv), PNG plots and MLflow records."""
