"""The Locust plugin: everything that imports Locust, and nothing below imports it.

``users`` (the user class and :func:`~athos_load.plugin.users.install`), ``runtime`` (the per-process
services on ``environment.athos``), ``shapes`` (load shapes and the capacity search),
``distributed`` (master/worker messages) and ``webui`` (the live tabs). Importing any of them
registers nothing; the locustfile calls ``install()``.
"""
