"""Tracktion disaster-recovery library: plain, typed Python used by the Airflow DAGs."""
