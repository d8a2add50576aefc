"""Shared fixtures. The client side runs under gevent, as it does inside Locust: patch first."""

from gevent import monkey

monkey.patch_all()
