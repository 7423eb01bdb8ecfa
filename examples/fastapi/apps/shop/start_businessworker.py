"""Business workers of the FastAPI example (they run Events.py beside this file)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events=".Events:Events",
    name="FastAPIShopWorker",
    count=1,
    register="127.0.0.1:1282",
)
