"""Run a DAG in-process with ``dag.test()`` and read back what its tasks returned.

Used by the demo and the tests: a real Airflow run (real task instances, XCom in the
metadata database), without a scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAGS_FOLDER = Path(__file__).resolve().parents[3] / "dags"


def load_dag(dag_id: str, dags_folder: Path = DAGS_FOLDER) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder / f"{dag_id}.py"))
    if bag.import_errors:
        raise RuntimeError("\n".join(bag.import_errors.values()))
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    """Run the DAG once with ``dag.test()``; return the DagRun."""
    return load_dag(dag_id).test(run_conf=conf or {})


def task_result(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    """The XCom ``key`` (default: the return value) a task of this run pushed (None when it
    pushed nothing)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dag_run.run_id, key=key, dag_ids=dag_run.dag_id, task_ids=task_id
        ).with_only_columns(XComModel.value)
        value = session.execute(query).scalar()
    return XComModel.deserialize_value(_Row(value)) if value is not None else None


class _Row:
    """``XComModel.deserialize_value`` takes a row with a ``.value``."""

    def __init__(self, value: Any):
        self.value = value


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
    return {task_id: str(state) for task_id, state in rows}
