"""The tasks of ``--generation-task``, one module each, and the loop that runs queries through them.

Each module defines a function ``(TaskContext, fields) -> QueryResult`` and its ``TASK`` record; they can be
called from Python with a :class:`TaskContext` (see ``generation.runtime`` to build one's parts).
"""

from generation.tasks import (
    image2text,
    low_level_super_resolution,
    post_selection,
    raw,
    super_resolution,
    text2image,
)
from generation.tasks.base import QueryResult, Task, TaskContext

TASKS: dict[str, Task] = {
    module.TASK.name: module.TASK
    for module in (text2image, image2text, super_resolution, low_level_super_resolution, post_selection, raw)
}

__all__ = ["TASKS", "QueryResult", "Task", "TaskContext"]
