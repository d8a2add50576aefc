"""athos-load: `locust -f locustfile.py` (no --host: runs against the built-in simulator).

RoleplayUser is one synthetic sales rep; AthosShape applies `--athos-shape` (default: Locust's own
-u/-r/-t). Options: `locust -f locustfile.py --help`, section athos-load.
"""

from athos_load.shapes import AthosShape  # noqa: F401
from athos_load.users import RoleplayUser  # noqa: F401
