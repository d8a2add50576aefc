"""athos-load: `locust -f locustfile.py` (no --host: runs against the built-in simulator)."""

from athos_load.users import RoleplayUser  # noqa: F401
