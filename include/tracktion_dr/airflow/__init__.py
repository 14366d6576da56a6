"""The only Airflow-facing layer: step kit, gates, scenario tail, params, connections, watches."""
