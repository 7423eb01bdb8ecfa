"""Business workers of the chat app. Events is named by import string so that it
is imported only inside worker processes (and ``reload`` picks up new code)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events="apps.chat.Events:Events",
    name="ChatBusinessWorker",
    count=2,
    register="127.0.0.1:1238",
)
