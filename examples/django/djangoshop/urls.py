"""URLs of the Django example (see ``djangoshop.views`` for the flow)."""

from django.urls import path

from djangoshop import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login", views.login, name="login"),
    path("bind", views.bind, name="bind"),
    path("orders", views.create_order, name="orders"),
    path("payment/callback", views.payment_callback, name="payment-callback"),
]
