"""Message building, and delivery through Airflow's notification providers."""
