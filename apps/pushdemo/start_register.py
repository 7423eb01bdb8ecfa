"""Register of the push-only demo (its own port, so it runs beside the chat)."""

from pygatewayworker import Register

register = Register(listen="127.0.0.1:1239", name="PushDemoRegister")
