"""athos-load: `locust -f locustfile.py` (no --host: runs against the built-in simulator).

SalesRep is one synthetic sales rep; AthosShape applies `--athos-shape` (default: Locust's own
-u/-r/-t). Options: `athos-load options`.
"""

from athos_load.plugin.shapes import AthosShape  # noqa: F401
from athos_load.plugin.users import RoleplayUser, install

install()


class SalesRep(RoleplayUser):
    """One synthetic sales rep making roleplay calls (RoleplayUser's documentation says how to change it)."""
