"""Business workers of the chat app. Events is named by import string so that it
is imported only inside worker processes (and ``reload`` picks up new code)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events="apps.chat.Events:Events",
    name="ChatBusinessWorker",
    count=2,
    register="127.0.0.1:1238",
    # The chat's plain callbacks (on_connect sends init, on_close tells the room) only
    # call the Gateway API and never block, so they run inline on the loop, without a
    # hop to a thread; on_message is a coroutine and runs on the loop in either mode.
    callbacks="inline",
)
