"""Business workers of the Flask example (they run Events.py beside this file)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events=".Events:Events",
    name="FlaskShopWorker",
    count=1,
    register="127.0.0.1:1281",
)
