"""The presets, one per file: each module's ``get_config()`` returns a ``dcsp_dist.config.Config``
and its docstring says why its settings are what they are. ``--config NAME`` picks one."""
