from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events=".Events:Events",
    count=2,
    register="127.0.0.1:1238",
    gateway_lost_timeout=10,  # a dead gateway's orders are unlocked within ~10 s
)
