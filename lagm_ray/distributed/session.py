"""Starting Ray (or joining the cluster in $RAY_ADDRESS) for a `lagm` command, quietly unless asked.

Ray's start-up INFO lines, its token-auth notice and Ray Data's plan and progress lines say nothing a user of
`lagm generate` or `lagm sweep` can act on; they still go to Ray's session logs (/tmp/ray/session_*/logs).
``verbose`` shows them in the terminal as Ray prints them. (The C++ core worker's own stderr lines are left
alone: silencing them takes RAY_BACKEND_LOG_LEVEL, which would also empty Ray's log files of real errors.)"""

from __future__ import annotations

import logging
import os

import ray
import ray.data  # configures its loggers on import; start_ray quiets their console handler


def start_ray(verbose: bool = False) -> None:
    if ray.is_initialized():
        return
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR)
    if not verbose:
        ray.data.DataContext.get_current().print_on_execution_start = False
        for handler in logging.getLogger("ray.data").handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(logging.ERROR)
