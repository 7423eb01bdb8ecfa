"""Register of the Django example: discovery only, never on the message path."""

from pygatewayworker import Register

register = Register(listen="127.0.0.1:1280", name="DjangoShopRegister")
