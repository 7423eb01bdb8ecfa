"""Business workers of the push-only demo: they only greet and say goodbye."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events="apps.pushdemo.Events:Events",
    name="PushDemoWorker",
    count=1,
    register="127.0.0.1:1239",
)
