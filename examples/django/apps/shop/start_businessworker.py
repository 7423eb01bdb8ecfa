"""Business workers of the Django example (they run Events.py beside this file)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events=".Events:Events",
    name="DjangoShopWorker",
    count=1,
    register="127.0.0.1:1280",
)
