"""The run directory's settings: a resume is compared with the settings the run was started
with (the ``config.json`` of each training stage), and refused, or with
``--allow-changed-config`` recorded in ``config_changes.json``."""
from __future__ import annotations

import os
import time

from dcsp_dist import config
from dcsp_dist.core import atomic
from dcsp_dist.core.errors import UserError
from dcsp_dist.core.stages import TRAINING_STAGES
from dcsp_dist.rundir import layout


def config_differences(workdir: str, settings: dict) -> list[str]:
    """``key: saved -> now`` for every setting that differs from the run's saved config.json
    files (one per training stage started), bookkeeping settings aside."""
    diffs = []
    for stage in TRAINING_STAGES:
        path = layout.config_path(layout.stage_dir(workdir, stage))
        if not os.path.isfile(path) or os.path.islink(os.path.join(workdir, stage)):
            continue
        saved = config.flatten(atomic.read_json(path, "saved config"))   # in sections, or flat (config format v1)
        for key in sorted(set(saved) & set(settings)):   # a setting added since keeps its default
            if key in config.BOOKKEEPING or saved[key] == settings[key]:
                continue
            line = f"{key}: {saved[key]!r} -> {settings[key]!r}"
            if line not in diffs:
                diffs.append(line)
    return diffs


def check_config_unchanged(workdir: str, settings: dict, allow: bool, warn=print) -> None:
    """Refuse (ValueError, one line listing the differences) a resume whose settings differ
    from the run's; with ``allow``, record the differences in ``<workdir>/config_changes.json``."""
    diffs = config_differences(workdir, settings)
    if not diffs:
        return
    if not allow:
        raise UserError(f"--workdir {workdir} was run with other settings ({'; '.join(diffs)}); relaunch with "
                         f"the same ones, or pass --allow-changed-config to go on with these (recorded in "
                         f"{layout.config_changes_path(workdir)})")
    log_path = layout.config_changes_path(workdir)
    history = atomic.read_json(log_path, "config change log") if os.path.isfile(log_path) else []
    history.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": diffs})
    atomic.write_json(log_path, history)
    warn(f"warning: settings differ from the run's ({'; '.join(diffs)}); recorded in {log_path}")
