"""Sensor evaluation as the daemon does it."""


def sensor_context(defs, instance, cursor=None):
    """A sensor evaluation context with the definitions' settings and warehouse resources (what the daemon gives)."""
    import dagster as dg

    resources = {k: v for k, v in defs.resources.items() if k in ("ibf", "warehouse")}
    return dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
