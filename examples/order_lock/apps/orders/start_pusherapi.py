from pygatewayworker.pusher import PusherAPI

# Laravel's pusher broadcaster (PUSHER_HOST/PUSHER_PORT) posts events here.
api = PusherAPI(events=".Events:Events", listen="127.0.0.1:6001", register="127.0.0.1:1238")
