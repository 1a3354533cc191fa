"""The Dagster code location, configured from the environment (see `project.Settings`)."""

from .project import Settings, build_definitions

defs = build_definitions(Settings.from_env())
