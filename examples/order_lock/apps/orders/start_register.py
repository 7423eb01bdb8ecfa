from pygatewayworker import Register

register = Register(listen="127.0.0.1:1238")
